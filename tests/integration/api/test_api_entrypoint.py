"""`flashpods-api --config … --bind … --workers …` on its own: real gunicorn, gthread workers."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

TOKEN = "entrypoint-test-token-0123456789"


def test_console_script_serves_the_app_from_a_config_file(tmp_path: Path):
    for name in ("db", "uploads", "workspaces", "artifacts", "logs"):
        (tmp_path / name).mkdir()
    (tmp_path / "token").write_text(TOKEN)
    config = {
        "instance": "entrypoint-test",
        "token_file": str(tmp_path / "token"),
        "db_path": str(tmp_path / "db" / "flashpods.db"),
        "storage": {n: str(tmp_path / n) for n in ("uploads", "workspaces", "artifacts", "logs")},
        "podman_url": f"unix://{tmp_path}/no-podman.sock",
    }
    (tmp_path / "api.json").write_text(json.dumps(config))
    script = Path(sys.executable).parent / "flashpods-api"
    env = {k: v for k, v in os.environ.items() if k != "FLASHPODS_API_CONFIG"}
    proc = subprocess.Popen(
        [
            str(script),
            "--config",
            str(tmp_path / "api.json"),
            "--bind",
            "127.0.0.1:0",
            "--workers",
            "2",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        port = None
        deadline = time.monotonic() + 30
        lines = []
        while port is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            lines.append(line)
            found = re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", line)
            port = found and int(found.group(1))
        assert port, "".join(lines)
        lines.append(proc.stderr.readline())
        assert "Using worker: gthread" in "".join(lines)  # threads hold long polls cheaply
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                health = requests.get(url + "/healthz", timeout=10)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        assert health.status_code == 503
        assert set(health.json()["failing"]) == {"podman", "reaper"}
        assert requests.get(url + "/jobs", timeout=10).status_code == 401
        listed = requests.get(
            url + "/jobs", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
        )
        assert listed.status_code == 200 and listed.json() == {"jobs": [], "next_cursor": None}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        proc.stderr.close()
