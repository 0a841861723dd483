"""images/worker/build.sh: a busybox image that works as a job image, rebuilt only on change."""

from __future__ import annotations

import os
import pwd
import secrets
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
BUILD = REPO / "images" / "worker" / "build.sh"


def _podman(*args: str) -> subprocess.CompletedProcess:
    argv = ["podman", *args]
    if os.geteuid() == 0:  # the store the dev host uses: the flashpods user's
        user = pwd.getpwnam("flashpods")
        argv = [
            "runuser", "-u", user.pw_name, "--", "env", "-i", f"HOME={user.pw_dir}",
            f"XDG_RUNTIME_DIR=/run/user/{user.pw_uid}", "PATH=/usr/bin:/bin", *argv,
        ]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture
def image():
    name = f"localhost/flashpods-worker-test-{secrets.token_hex(3)}:latest"
    yield name
    _podman("rmi", "-f", name)


def _build(image: str, *args: str) -> subprocess.CompletedProcess:
    env = os.environ | {"FLASHPODS_WORKER_IMAGE": image}
    return subprocess.run(
        ["bash", str(BUILD), *args], env=env, capture_output=True, text=True, timeout=120
    )


def _image_id(image: str) -> str:
    return _podman("image", "inspect", "--format", "{{.Id}}", image).stdout.strip()


def test_worker_image_runs_jobs_like_the_api_starts_them(image: str) -> None:
    built = _build(image)
    assert built.returncode == 0, built.stderr
    # The flags of the job container contract that touch the image: keep-id, read-only
    # root with a tmpfs /tmp, PATH from the image.
    probe = (
        'echo "path=$PATH"; id -u; test -d /workspace && test -d /artifacts && echo mounts-ok; '
        "stat -c %a /tmp; ls -l /bin/sh /bin/busybox; wc -l < /etc/passwd"
    )
    ran = _podman(
        "run", "--rm", "--userns=keep-id", "--read-only", "--tmpfs", "/tmp:rw,mode=1777",
        "--cap-drop", "ALL", "--security-opt", "no-new-privileges", image, "sh", "-c", probe,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    lines = ran.stdout.splitlines()
    assert "path=/bin" in lines
    assert "mounts-ok" in lines
    assert "1777" in lines
    # Applets are links to busybox; busybox itself is the binary, not a link to itself.
    assert any(line.startswith("l") and line.endswith("/bin/sh -> busybox") for line in lines)
    assert any(line.startswith("-") and line.endswith("/bin/busybox") for line in lines)


def test_unchanged_inputs_do_not_rebuild_and_force_does(image: str) -> None:
    assert _build(image).returncode == 0
    first = _image_id(image)
    again = _build(image)
    assert again.returncode == 0 and "importing" not in again.stderr
    assert _image_id(image) == first
    forced = _build(image, "--force")
    assert forced.returncode == 0 and "importing" in forced.stderr
