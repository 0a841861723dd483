"""Roots of crashed test runs are removed at session start, roots in use never."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from pathlib import Path

import pytest
from flashpods_devhost import stale
from flashpods_devhost.pytest_plugin import TEST_BASE

HOUR_AGO = time.time() - 3600


@pytest.fixture
def base():
    """A private test base (so a concurrent session's roots are never in play)."""
    path = TEST_BASE / f"stale-test-{secrets.token_hex(4)}"
    path.mkdir(parents=True)
    yield path
    subprocess.run(["rm", "-rf", str(path)], check=True)


def fake_root(base: Path, age_s: float = 3600) -> Path:
    """A root as a crashed DevHost leaves it: layout, config, logs, all old."""
    root = base / secrets.token_hex(4)
    for sub in ("etc", "log", "run", "workspaces"):
        (root / sub).mkdir(parents=True)
    (root / "etc" / "api.json").write_text(json.dumps({"instance": f"t-{root.name}"}))
    (root / "log" / "api.log").write_text("crashed\n")
    (root / "workspaces" / "job_x").mkdir()
    stamp = time.time() - age_s
    for path in [root, *root.rglob("*")]:
        os.utime(path, (stamp, stamp), follow_symlinks=False)
    return root


def _wait_for(condition, timeout_s: float = 10) -> None:
    """A child started by Popen is the parent's copy until it has chdir'd and exec'd."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the child process never got there"
        time.sleep(0.01)


def test_dead_old_root_without_containers_is_removed(base):
    root = fake_root(base)
    assert stale.remove_stale_roots(base) == [root]
    assert not root.exists()


def test_root_with_a_live_process_is_kept(base):
    root = fake_root(base)
    # The launcher runs every service with the root as working directory.
    sleeper = subprocess.Popen(["sleep", "60"], cwd=root / "run")
    try:
        _wait_for(lambda: os.readlink(f"/proc/{sleeper.pid}/cwd") == str(root / "run"))
        assert stale.remove_stale_roots(base) == []
        assert root.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert stale.remove_stale_roots(base) == [root]


def test_root_named_on_a_command_line_is_kept(base):
    root = fake_root(base)
    holder = subprocess.Popen(["sh", "-c", "sleep 60", "holder", f"--config={root}/etc/x"])
    try:
        # Until the child has exec'd, /proc shows the parent's command line, not the root.
        cmdline = Path(f"/proc/{holder.pid}/cmdline")
        _wait_for(lambda: str(root).encode() in cmdline.read_bytes())
        assert stale.stale_roots(base) == []
    finally:
        holder.kill()
        holder.wait()


def test_recent_root_is_kept(base):
    fresh = fake_root(base, age_s=5)  # maybe a concurrent session about to start services
    assert stale.remove_stale_roots(base) == []
    assert fresh.exists()


def test_root_with_a_container_left_is_kept(base):
    root = fake_root(base)
    seen = []

    def containers(path: Path, instance: str) -> bool:
        seen.append((path, instance))
        return True

    assert stale.stale_roots(base, containers=containers) == []
    assert seen == [(root, f"t-{root.name}")]


def test_real_podman_lists_a_container_of_the_instance(base, devhost_factory):
    host = devhost_factory()
    root = fake_root(base)
    # Not the host's own instance: its reaper removes containers of its instance that
    # have no job record, within a tick, and would race this check.
    instance = f"t-unmanaged-{secrets.token_hex(4)}"
    assert not stale.has_containers(root, instance)
    started = host.podman(
        "run", "-d", "--rm", "--label", f"flashpods.instance={instance}",
        "localhost/flashpods-worker:latest", "sleep", "60",
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    try:
        assert stale.has_containers(root, instance)
    finally:
        host.podman("rm", "-f", "-t", "0", started.stdout.strip(), in_netns=False)


def test_only_plugin_made_roots_are_candidates(base):
    other = base / "helper-bin-0123456789"
    (other / "etc").mkdir(parents=True)
    no_layout = base / "0123abcd"
    no_layout.mkdir()
    for path in (other, other / "etc", no_layout):
        os.utime(path, (HOUR_AGO, HOUR_AGO))
    assert stale.remove_stale_roots(base) == []
    assert other.exists() and no_layout.exists()


def test_root_kept_on_purpose_is_kept(base):
    root = fake_root(base)
    (root / stale.KEPT_MARKER).touch()
    os.utime(root, (HOUR_AGO, HOUR_AGO))
    assert stale.remove_stale_roots(base) == []
    assert root.exists()
