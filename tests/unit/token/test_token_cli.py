"""The `flashpods-token` console script as a real process: config errors, the missing
capability in peer mode, the socket it makes, and a clean stop on SIGTERM."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import base_config, exchange

VENV_BIN = Path(os.environ.get("FLASHPODS_VENV", "/opt/flashpods/venv")) / "bin"
TOKEN_USER = "flashpods-token"


def script() -> str:
    found = shutil.which("flashpods-token", path=str(VENV_BIN)) or shutil.which("flashpods-token")
    assert found, "flashpods-token is not installed (pip install --no-deps -e services/token)"
    return found


def run(config_path: Path, *prefix: str, timeout: float = 20) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "FLASHPODS_TOKEN_CONFIG": str(config_path)}
    return subprocess.run(
        [*prefix, script()], env=env, capture_output=True, text=True, timeout=timeout
    )


def test_unknown_key_stops_with_a_sentence(tmp_path, secret_files, podman):
    cfg = base_config(tmp_path, secret_files, podman, mode="peer")
    cfg["sokcet"] = "/x"
    path = tmp_path / "token.json"
    path.write_text(json.dumps(cfg))
    out = run(path)
    assert out.returncode == 2
    assert "unknown key 'sokcet'" in out.stderr


def test_an_old_sub_agent_role_stops_with_the_new_name(tmp_path, secret_files, podman):
    cfg = base_config(tmp_path, secret_files, podman, mode="peer")
    cfg["roles"] = {"worker": [], "agent": ["GITHUB_TOKEN"]}
    path = tmp_path / "token.json"
    path.write_text(json.dumps(cfg))
    out = run(path)
    assert out.returncode == 2
    assert "roles.agent is an old name of the sub-agent role; write roles.sub_agent" in out.stderr


def test_missing_config_variable_says_what_to_set():
    out = subprocess.run([script()], env={"PATH": "/usr/bin:/bin"}, capture_output=True,
                         text=True, timeout=20)  # fmt: skip
    assert out.returncode == 2 and "FLASHPODS_TOKEN_CONFIG" in out.stderr


@pytest.mark.root  # switches to the token user with setpriv
def test_peer_mode_without_cap_sys_ptrace_refuses_to_start(
    tmp_path, secret_files, podman, sock_dir
):
    pwd.getpwnam(TOKEN_USER)
    os.chmod(podman.path, 0o666)  # reachable, but owned by root, not by the service user
    cfg = base_config(tmp_path, secret_files, podman, mode="peer", audit_log=None)
    path = sock_dir / "token.json"  # tmp_path is under a 0700 directory
    path.write_text(json.dumps(cfg))
    path.chmod(0o644)
    os.chmod(sock_dir, 0o755)
    out = run(path, "setpriv", f"--reuid={TOKEN_USER}", f"--regid={TOKEN_USER}", "--init-groups")
    assert out.returncode != 0
    assert "needs CAP_SYS_PTRACE" in out.stderr and "--ambient-caps=+sys_ptrace" in out.stderr


def test_serves_on_the_socket_and_removes_it_on_sigterm(tmp_path, secret_files, podman):
    cfg = base_config(tmp_path, secret_files, podman, mode="peer")
    path = tmp_path / "token.json"
    path.write_text(json.dumps(cfg))
    env = {"PATH": "/usr/bin:/bin", "FLASHPODS_TOKEN_CONFIG": str(path)}
    proc = subprocess.Popen([script()], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(cfg["socket"]):
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        status, body, _ = exchange(cfg["socket"])
        assert status == 401 and body["check"] == "peer_container"
        # No TCP socket: every socket the process holds is a unix one.
        inodes = {
            os.readlink(f"/proc/{proc.pid}/fd/{fd}")[8:-1]
            for fd in os.listdir(f"/proc/{proc.pid}/fd")
            if os.readlink(f"/proc/{proc.pid}/fd/{fd}").startswith("socket:")
        }
        for table in ("tcp", "tcp6", "udp", "udp6"):
            rows = Path(f"/proc/{proc.pid}/net/{table}").read_text().splitlines()[1:]
            assert not inodes & {row.split()[9] for row in rows}, table
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        proc.stderr.close()
    assert not os.path.exists(cfg["socket"])


@pytest.mark.parametrize("mode", ["spire"])
def test_spire_mode_with_an_unreadable_bundle_refuses_to_start(
    tmp_path, secret_files, podman, mode
):
    cfg = base_config(tmp_path, secret_files, podman, mode=mode,
                      spire={"bundle_file": str(tmp_path / "missing.json")})  # fmt: skip
    path = tmp_path / "token.json"
    path.write_text(json.dumps(cfg))
    out = run(path)
    assert out.returncode != 0 and "bundle file" in out.stderr and "missing.json" in out.stderr
