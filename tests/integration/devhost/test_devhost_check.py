"""`scripts/dev-host --check` (`flashpods-devhost check`): one test per component it can
report missing, each against the real thing missing, and one with everything there."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from flashpods_devhost import doctor
from flashpods_devhost.pytest_plugin import TEST_BASE

REPO = Path(__file__).resolve().parents[3]
VENV = Path(os.environ.get("FLASHPODS_VENV", "/opt/flashpods/venv"))


def check(*args: str, env: dict[str, str] | None = None, script: bool = False):
    """`flashpods-devhost check` (or scripts/dev-host --check, which runs it) on a root
    of its own (no host there unless a test starts one)."""
    root = TEST_BASE / f"check-{secrets.token_hex(4)}"
    argv = (
        [str(REPO / "scripts/dev-host"), "--check"]
        if script
        else [str(VENV / "bin" / "flashpods-devhost"), "check"]
    )
    return subprocess.run(
        [*argv, "--root", str(root), *args],
        env=os.environ | {"FLASHPODS_VENV": str(VENV)} | (env or {}),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def missing_lines(out: str) -> dict[str, str]:
    """{component: detail + fix} for every MISSING line of the screen."""
    lines, found = out.splitlines(), {}
    for i, line in enumerate(lines):
        if line.startswith("MISSING"):
            name = line.split()[1] if line.split()[1] != "dev" else "dev host"
            fix = lines[i + 1].strip() if i + 1 < len(lines) else ""
            found[name] = line + "\n" + fix
    return found


def test_on_this_machine_only_the_host_itself_is_missing():
    done = check(script=True)
    assert done.returncode == 1, done.stdout + done.stderr
    assert set(missing_lines(done.stdout)) == {"dev host"}, done.stdout
    assert "fix: sudo scripts/dev-host --detach" in done.stdout
    for name in ("programs", "venv", "helper", "users", "image"):
        assert f"ok      {name}" in done.stdout
    assert "flashpods-devhost: defaults: " in done.stdout


def test_a_missing_program_is_named_with_the_install_command(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for program in ("rsync", "curl", "setpriv", "nsenter", "nft", "runuser", "env"):
        if shutil.which(program):
            (bin_dir / program).symlink_to(shutil.which(program))
    done = check(env={"PATH": f"{bin_dir}:/usr/bin/python3-only-not-a-dir"})
    missing = missing_lines(done.stdout)
    assert "not installed: podman" in missing["programs"], done.stdout + done.stderr
    assert "fix: sudo bash scripts/lib/packages.sh" in missing["programs"]


def test_a_missing_venv_is_named_with_the_command_that_builds_it(tmp_path):
    done = subprocess.run(
        [str(VENV / "bin" / "flashpods-devhost"), "check", "--root", str(tmp_path / "r")],
        env=os.environ | {"FLASHPODS_VENV": str(tmp_path / "no-venv")},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    missing = missing_lines(done.stdout)
    assert f"{tmp_path}/no-venv lacks flashpods-api" in missing["venv"], done.stdout
    assert f"FLASHPODS_VENV={tmp_path}/no-venv bash scripts/lib/venv.sh" in missing["venv"]


def test_a_missing_helper_is_named_with_the_build_command(tmp_path):
    config = tmp_path / "flashpods.toml"
    config.write_text(f'helper_path = "{tmp_path}/lib/flashpods-init"\n')
    missing = missing_lines(check("--config", str(config)).stdout)
    assert f"no executable flashpods-init at {tmp_path}/lib/flashpods-init" in missing["helper"]
    assert f"build-helper.sh {tmp_path}/lib/flashpods-init" in missing["helper"]


def test_a_missing_image_is_named_with_the_build_command(tmp_path):
    image = f"localhost/flashpods-no-such-{secrets.token_hex(3)}:latest"
    config = tmp_path / "flashpods.toml"
    config.write_text(
        f'[images]\nworker = "{image}"\nallowed = ["{image}", "localhost/flashpods-agent:latest"]\n'
    )
    done = check("--config", str(config))
    missing = missing_lines(done.stdout)
    assert f"{image} is not in the job user's Podman store" in missing["image"], done.stdout
    assert "scripts/lib/build-images.sh" in missing["image"]
    assert "ok      image          localhost/flashpods-agent:latest" in done.stdout


@pytest.mark.root
def test_a_missing_service_user_is_named_with_the_command_that_adds_it(tmp_path):
    m = doctor.Machine(tmp_path, VENV, tmp_path / "helper", (), os.environ["PATH"], True)
    [finding] = doctor.check_users(m, ("flashpods", "flashpods-no-such-user"))
    assert not finding.ok and finding.detail == "missing: flashpods-no-such-user"
    assert "scripts/lib/users.sh" in finding.fix


@pytest.mark.slow
def test_a_running_host_is_reported_and_each_dead_service_named(devhost_factory):
    host = devhost_factory(warm_pool={"worker": 1})
    up = doctor.check_running(host.settings.root)
    assert [(f.name, f.ok) for f in up] == [
        ("api", True),
        ("rsyncd", True),
        ("token service", True),
    ]
    assert "warm pool ready" in up[0].detail and "'worker': 1" in up[0].detail
    for name in ("podman", "token", "rsyncd"):
        host.kill(name, signal.SIGKILL)
    # /healthz caches its Podman probe for a moment: ask until it has noticed.
    deadline = time.monotonic() + 60
    while True:
        down = {f.name: f for f in doctor.check_running(host.settings.root)}
        if not down["api"].ok or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not down["api"].ok and "podman" in down["api"].detail
    assert not down["rsyncd"].ok and "nothing listens" in down["rsyncd"].detail
    assert not down["token service"].ok and "nothing answers" in down["token service"].detail
    assert all(f.fix for f in down.values())
    text = doctor.render(list(down.values()))
    assert text.endswith("3 problems: see fix above")
