"""`scripts/dev-host --detach` starts a host a client can use; `scripts/dev-host stop` ends it.

Runs on its own root, ports, instance and client env file (environment variables), so it
never collides with a real dev host on this machine.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import requests
from flashpods_devhost.pytest_plugin import TEST_BASE

REPO = Path(__file__).resolve().parents[3]
# What README.md tells a user to do with curl, rsync and jq against the dev host.
README_WALKTHROUGH = r"""
set -euo pipefail
set -a; . "$1"; set +a
auth="Authorization: Bearer $(cat "$FLASHPODS_API_TOKEN_FILE")"
src=$(mktemp -d); trap 'rm -rf "$src"' EXIT
echo hello-from-upload > "$src/input.txt"
up=$(curl -sS -H "$auth" -X POST "$FLASHPODS_API_URL/uploads")
rsync -r "$src/" "$(printf '%s' "$up" | jq -r .rsync_url)"
body=$(jq -n --arg up "$(printf '%s' "$up" | jq -r .upload_id)" \
  '{kind: "worker", upload_id: $up,
    command: "cat /workspace/input.txt; echo result > /artifacts/out.txt"}')
job=$(curl -sS -H "$auth" -H 'Content-Type: application/json' -d "$body" \
  "$FLASHPODS_API_URL/jobs")
id=$(printf '%s' "$job" | jq -r .job.id)
for _ in $(seq 600); do
  status=$(curl -sS -H "$auth" "$FLASHPODS_API_URL/jobs/$id" | jq -r .job.status)
  case $status in succeeded|failed|timed_out|killed|lost) break ;; esac
  sleep 0.2
done
echo "status=$status"
curl -sS -H "$auth" "$FLASHPODS_API_URL/jobs/$id/logs?offset=0" | jq -r .data
curl -sS -H "$auth" "$FLASHPODS_API_URL/jobs/$id/artifacts" | jq -e '.artifacts[].path' >/dev/null
echo "artifact=$(curl -sS -H "$auth" "$FLASHPODS_API_URL/jobs/$id/artifacts/out.txt")"
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _read_env(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {key: value for key, value in pairs}


def _alive(pid: int) -> bool:
    """Running, not a zombie (PID 1 here need not reap the orphans it inherits)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


@pytest.fixture
def dev_env():
    unique = secrets.token_hex(4)
    root = TEST_BASE / f"script-{unique}"
    env = os.environ | {
        "FLASHPODS_DEV_ROOT": str(root),
        "FLASHPODS_DEV_INSTANCE": f"t-script-{unique}",
        "FLASHPODS_DEV_API_PORT": str(_free_port()),
        "FLASHPODS_DEV_RSYNC_PORT": str(_free_port()),
        "FLASHPODS_DEV_ENV_FILE": str(root.with_name(f"script-{unique}-client") / "dev-host.env"),
    }
    yield env
    # Whatever happened, nothing of this host may outlive the test.
    subprocess.run([str(REPO / "scripts/dev-host"), "stop"], env=env, timeout=120, check=False)
    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(Path(env["FLASHPODS_DEV_ENV_FILE"]).parent, ignore_errors=True)


def _dev_host(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(REPO / "scripts/dev-host"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def test_detach_then_stop(dev_env: dict[str, str]) -> None:
    # setup.sh already ran (scripts/test); --no-firewall: the table would bind the whole
    # machine's flashpods uid, and other tests share it. A secret in the environment
    # starts the credential proxy too (its host rules are the CLI's).
    dev_env = dev_env | {"GITHUB_TOKEN": f"ghp_devhost{secrets.token_hex(8)}"}
    started = _dev_host(dev_env, "--detach", "--no-install", "--no-firewall")
    assert started.returncode == 0, started.stdout + started.stderr
    assert "claude mcp add flashpods -- /opt/flashpods/venv/bin/flashpods-mcp" in started.stdout

    env_file = Path(dev_env["FLASHPODS_DEV_ENV_FILE"])
    client = _read_env(env_file)
    api_port = int(dev_env["FLASHPODS_DEV_API_PORT"])
    rsync_port = int(dev_env["FLASHPODS_DEV_RSYNC_PORT"])
    assert client["FLASHPODS_API_URL"] == f"http://127.0.0.1:{api_port}"
    assert client["FLASHPODS_RSYNC_URL"] == f"rsync://127.0.0.1:{rsync_port}/uploads"
    for key, value in client.items():
        assert f"{key}={value}" in started.stdout
    token = Path(client["FLASHPODS_API_TOKEN_FILE"]).read_text().strip()

    # The settings work as written: health, auth, and rsyncd's module answers.
    api = client["FLASHPODS_API_URL"]
    assert requests.get(f"{api}/healthz", timeout=10).status_code == 200
    assert requests.get(f"{api}/jobs", timeout=10).status_code == 401
    auth = {"Authorization": f"Bearer {token}"}
    assert requests.get(f"{api}/jobs", headers=auth, timeout=10).status_code == 200
    assert _listening(rsync_port)
    proxy_sock = Path(dev_env["FLASHPODS_DEV_ROOT"]) / "run" / "token" / "proxy.sock"
    assert proxy_sock.is_socket()

    # The README's curl walk-through, verbatim in spirit: upload, job, logs, artifact.
    walk = subprocess.run(
        ["bash", "-c", README_WALKTHROUGH, "walkthrough", str(env_file)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert walk.returncode == 0, walk.stdout + walk.stderr
    assert "status=succeeded" in walk.stdout
    assert "hello-from-upload" in walk.stdout  # the uploaded file, read by the job
    assert "artifact=result" in walk.stdout

    # A second start on the same root is refused with a sentence, not a second host.
    again = _dev_host(dev_env, "--detach", "--no-install", "--no-firewall")
    assert again.returncode != 0
    assert "already runs" in again.stderr

    pid = int((Path(dev_env["FLASHPODS_DEV_ROOT"]) / "run" / "devhost.pid").read_text())
    stopped = _dev_host(dev_env, "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert not _alive(pid)
    assert not _listening(api_port) and not _listening(rsync_port)
    # Nothing that ran from this root is left.
    root = dev_env["FLASHPODS_DEV_ROOT"]
    leftovers = subprocess.run(["pgrep", "-f", root], capture_output=True, text=True)
    assert leftovers.stdout.strip() == ""
