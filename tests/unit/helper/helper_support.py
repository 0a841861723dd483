"""Shared helpers for the flashpods-init tests (kept out of conftest.py so
test modules can import them by a name unique in the whole test tree)."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
BUILD_SCRIPT = REPO / "scripts" / "lib" / "build-helper.sh"
# World-traversable, so the flashpods user (and its containers) can reach
# what the tests put there (/tmp/pytest-of-root is 0700).
TEST_ROOT = Path("/var/tmp/flashpods-test")


def make_root(prefix: str) -> Path:
    TEST_ROOT.mkdir(mode=0o755, exist_ok=True)
    root = TEST_ROOT / f"{prefix}-{uuid.uuid4().hex[:10]}"
    root.mkdir(mode=0o755)
    return root


def base_env(workdir: Path, **extra: str) -> dict[str, str]:
    """A clean environment: no FLASHPODS_* leaks in from the caller, copy-in
    pointed at paths that do not exist unless a test creates them."""
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(workdir / "home"),
        "FLASHPODS_INPUT_DIR": str(workdir / "no-input"),
        "FLASHPODS_WORKSPACE_DIR": str(workdir / "no-workspace"),
    }
    env.update(extra)
    return env


def run_helper(
    helper: Path, args: list[str], env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(helper), *args], env=env, capture_output=True, text=True, timeout=timeout
    )


# The job image every dev host has (busybox-static; see images/worker/).
WORKER_IMAGE = "localhost/flashpods-worker:latest"


def podman(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """The podman CLI as the flashpods user, the way the API runs jobs."""
    return subprocess.run(
        [
            "runuser",
            "-u",
            "flashpods",
            "--",
            "env",
            "-i",
            "HOME=/home/flashpods",
            "XDG_RUNTIME_DIR=/run/user/1001",
            "PATH=/usr/bin:/bin",
            "podman",
            *args,
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=timeout,
    )
