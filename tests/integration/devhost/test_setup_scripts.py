"""scripts/lib install steps are idempotent: a second run changes nothing and says nothing."""

from __future__ import annotations

import grp
import pwd
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
LIB = REPO / "scripts" / "lib"


def _step(name: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(LIB / name)], capture_output=True, text=True, timeout=600, check=False
    )


def test_packages_step_is_quiet_when_everything_is_installed() -> None:
    done = _step("packages.sh")
    assert done.returncode == 0, done.stderr
    assert "installing" not in done.stderr


def test_users_step_creates_the_design_users_once() -> None:
    first, second = _step("users.sh"), _step("users.sh")
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert "creating" not in second.stderr and "giving" not in second.stderr
    members = grp.getgrnam("flashpods").gr_mem
    assert {"flashpods-api", "flashpods-token"} <= set(members)
    for table in ("/etc/subuid", "/etc/subgid"):
        owners = [line.split(":")[0] for line in Path(table).read_text().splitlines()]
        assert owners.count("flashpods") == 1
    runtime = Path(f"/run/user/{pwd.getpwnam('flashpods').pw_uid}")
    assert runtime.stat().st_mode & 0o777 == 0o700


def test_podman_step_keeps_a_working_runtime_config() -> None:
    conf = Path(pwd.getpwnam("flashpods").pw_dir) / ".config/containers/containers.conf"
    assert _step("podman.sh").returncode == 0
    before = (conf.read_text(), conf.stat().st_mtime_ns)
    again = _step("podman.sh")
    assert again.returncode == 0, again.stderr
    # Unchanged content is not rewritten (no mtime change), and says which runtime works.
    assert (conf.read_text(), conf.stat().st_mtime_ns) == before
    assert 'cgroup_manager = "cgroupfs"' in before[0]
    assert any(f'runtime = "{name}"' in before[0] for name in ("crun", "runc"))
    assert Path("/dev/net/tun").stat().st_mode & 0o666 == 0o666
