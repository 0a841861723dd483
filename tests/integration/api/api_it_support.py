"""A small HTTP client for the API integration tests (real dev host, real Podman)."""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import requests
from flashpods_mcp.client import dropped_connection

FINAL = ("succeeded", "failed", "timed_out", "killed", "lost")


class Api:
    def __init__(self, host: Any) -> None:
        self.host = host
        self.url = host.api_url
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {host.api_token}"

    def get(self, path: str, **kw: Any) -> requests.Response:
        kw.setdefault("timeout", 30)
        try:
            return self.session.get(self.url + path, **kw)
        except requests.exceptions.ConnectionError as exc:
            # gunicorn closed the kept-alive connection as this GET went out on it (seen
            # in CI under load): sent again on a new one, as the MCP client does.
            if not dropped_connection(exc):
                raise
            return self.session.get(self.url + path, **kw)

    def post(self, path: str, json: Any = None, **kw: Any) -> requests.Response:
        kw.setdefault("timeout", 60)
        return self.session.post(self.url + path, json=json, **kw)

    def submit(self, command: str, **fields: Any) -> dict[str, Any]:
        resp = self.post("/jobs", {"kind": "worker", "command": command, **fields})
        assert resp.status_code == 201, resp.text
        return resp.json()["job"]

    def job(self, job_id: str) -> dict[str, Any]:
        resp = self.get(f"/jobs/{job_id}")
        assert resp.status_code == 200, resp.text
        return resp.json()["job"]

    def wait(
        self, job_id: str, timeout: float = 60, statuses: tuple[str, ...] = FINAL
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job["status"] in statuses:
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"{job_id} still {job['status']} after {timeout} s: {job}")
            time.sleep(0.1)

    def log_text(self, job_id: str) -> str:
        out, offset = [], 0
        while True:
            body = self.get(f"/jobs/{job_id}/logs", params={"offset": offset, "limit": 4096}).json()
            out.append(body["data"])
            offset = body["next_offset"]
            if body["final"] or not body["data"]:
                return "".join(out)

    def upload(self, files: dict[str, str | bytes], basis: str | None = None) -> dict[str, Any]:
        """Reserve an upload and send `files` with the real rsync client to the host's rsyncd."""
        reserved = self.post("/uploads", {"basis": basis} if basis else None)
        assert reserved.status_code == 201, reserved.text
        answer = reserved.json()
        with tempfile.TemporaryDirectory() as tmp:
            for name, content in files.items():
                path = Path(tmp) / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(content.encode() if isinstance(content, str) else content)
            argv = ["rsync", "-rlt", "--chmod=Dug+rwx,Fug+rw"]
            if "link_dest" in answer:
                argv.append(f"--link-dest={answer['link_dest']}")
            subprocess.run(
                [*argv, f"{tmp}/", answer["rsync_url"]], check=True, capture_output=True, timeout=60
            )
        return answer


def containers(host: Any) -> list[str]:
    listed = host.podman(
        "ps",
        "-a",
        "--filter",
        f"label=flashpods.instance={host.settings.instance}",
        "--format",
        "{{.Names}}",
    )
    assert listed.returncode == 0, listed.stderr
    return listed.stdout.split()


def wait_no_containers(host: Any, timeout: float = 20) -> list[str]:
    """Containers left after `timeout` (one goes just after its job's end is recorded)."""
    deadline = time.monotonic() + timeout
    while (left := containers(host)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left
