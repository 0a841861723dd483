"""--wait-command: a warm container's helper waits for the command the API hands over,
asks the token service for nothing before that, then copies in, exchanges and runs it."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from helper_standin import grant
from helper_support import base_env


def encode(argv: list[str], env: dict[str, str]) -> bytes:
    parts = ["flashpods-command-1", str(len(argv)), *argv, str(len(env))]
    parts += [f"{k}={v}" for k, v in env.items()]
    return b"".join(p.encode() + b"\0" for p in parts)


def hand_over(control: Path, data: bytes) -> None:
    tmp = control / ".command.tmp"
    tmp.write_bytes(data)
    os.rename(tmp, control / "command")


def start(helper: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(helper), "--wait-command"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def control(workdir: Path) -> Path:
    path = workdir / "control"
    path.mkdir()
    return path


def test_waits_then_runs_the_handed_over_command_with_its_env_and_upload(
    helper, workdir, control, token_server
):
    server = token_server(grant({"GITHUB_TOKEN": "ghp-1"}))
    workspace = workdir / "ws"
    workspace.mkdir()
    env = base_env(
        workdir,
        FLASHPODS_CONTROL_DIR=str(control),
        FLASHPODS_WORKSPACE_DIR=str(workspace),
        FLASHPODS_TOKEN_SOCKET=str(server.path),
    )
    proc = start(helper, env)
    time.sleep(0.5)
    assert proc.poll() is None  # still waiting
    assert server.requests == []  # and it asked the token service for nothing
    upload = control / "upload"
    upload.mkdir()
    (upload / "in.txt").write_text("payload\n")
    script = 'cat "$0"/in.txt; echo "$FOO|$GITHUB_TOKEN" >&2; exit 4'
    data = encode(
        ["/bin/sh", "-c", script, str(workspace)],
        {"FOO": "a=b c", "FLASHPODS_INPUT_DIR": str(upload)},
    )
    started = time.monotonic()
    hand_over(control, data)
    out, err = proc.communicate(timeout=30)
    assert time.monotonic() - started < 1.0  # inotify, not a slow poll
    assert proc.returncode == 4, err
    assert out == "payload\n"
    assert err == "a=b c|ghp-1\n"
    assert (workspace / ".flashpods-ready").exists()
    assert len(server.requests) == 1


def test_a_command_already_there_runs_at_once(helper, workdir, control):
    hand_over(control, encode(["/bin/sh", "-c", "echo now"], {}))
    env = base_env(workdir, FLASHPODS_CONTROL_DIR=str(control))
    proc = start(helper, env)
    out, err = proc.communicate(timeout=30)
    assert (proc.returncode, out) == (0, "now\n"), err


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"nonsense\0", "does not start with flashpods-command-1"),
        (b"flashpods-command-1\x000\x000\0", "no valid argument count"),
        (b"flashpods-command-1\x002\0sh\0", "cut short"),
        (b"flashpods-command-1\x001\0sh\x001\0NOEQUALS\0", "not NAME=VALUE"),
        (b"flashpods-command-1\x001\0sh\x000\0extra\0", "trailing data"),
        (b"flashpods-command-1\x001\0sh\0x\0", "no valid environment count"),
    ],
)
def test_a_bad_command_file_fails_with_one_line(helper, workdir, control, data, says):
    hand_over(control, data)
    proc = start(helper, base_env(workdir, FLASHPODS_CONTROL_DIR=str(control)))
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 125
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("flashpods-init: ") and says in err


def test_missing_control_dir_and_wait_timeout(helper, workdir, control):
    env = base_env(workdir, FLASHPODS_CONTROL_DIR=str(workdir / "nope"))
    proc = start(helper, env)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 125 and "control directory" in err

    env = base_env(workdir, FLASHPODS_CONTROL_DIR=str(control), FLASHPODS_WAIT_S="1")
    started = time.monotonic()
    proc = start(helper, env)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 125 and "no command was handed over within 1 s" in err
    assert 0.9 < time.monotonic() - started < 5


def test_a_symlinked_command_file_is_refused(helper, workdir, control):
    target = workdir / "elsewhere"
    target.write_bytes(encode(["/bin/sh", "-c", "echo hijacked"], {}))
    (control / "command").symlink_to(target)
    proc = start(helper, base_env(workdir, FLASHPODS_CONTROL_DIR=str(control)))
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 125 and out == "" and "flashpods-init:" in err
