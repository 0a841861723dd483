"""Container creation is serialized across threads and processes (runtime._creating):
Podman 4.3's service fails concurrent keep-id creations (benchmark P4a). A real `podman`
stand-in on PATH records when each call starts and ends; no two may overlap."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

from flashpods_api.runtime import RunSpec, Runtime

STAND_IN = """#!/bin/sh
# A podman stand-in: `podman ... info` answers JSON; `podman ... run` notes when it
# starts and ends, a little apart.
for arg in "$@"; do
    case $arg in
    info) echo '{{"host": {{"cgroupVersion": "v2"}}}}'; exit 0 ;;
    run) break ;;
    esac
done
echo "start $(date +%s%N)" >> "{log}"
sleep 0.05
echo "end $(date +%s%N)" >> "{log}"
echo 0123456789abcdef
"""


def _podman_on_path(tmp_path: Path, monkeypatch) -> Path:
    log = tmp_path / "calls.log"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    podman = bin_dir / "podman"
    podman.write_text(STAND_IN.format(log=log))
    podman.chmod(podman.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return log


def _spec(job_id: str) -> RunSpec:
    return RunSpec(
        job_id=job_id,
        kind="worker",
        instance="t",
        image="localhost/x",
        argv=["true"],
        env={},
        workspace="/w",
        artifacts="/a",
        log_path="/l",
        helper_path="/h",
        token_socket="/t/token.sock",
        network_mode="slirp4netns",
    )


def _overlaps(log: Path) -> int:
    """How many calls started while another was still running."""
    depth = worst = 0
    events = sorted(
        (int(t), kind) for kind, t in (line.split() for line in log.read_text().splitlines())
    )
    for _t, kind in events:
        depth += 1 if kind == "start" else -1
        worst = max(worst, depth)
    return worst - 1


def _start_six_at_once(runtime: Runtime) -> None:
    threads = [
        threading.Thread(target=runtime.run, args=(_spec(f"job_{i:012d}"),)) for i in range(6)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_creations_from_many_threads_never_overlap(tmp_path, monkeypatch):
    log = _podman_on_path(tmp_path, monkeypatch)
    _start_six_at_once(Runtime("unix:///nonexistent", "t", create_lock=tmp_path / "create.lock"))
    assert len(log.read_text().splitlines()) == 12
    assert _overlaps(log) == 0


def test_without_a_lock_file_calls_do_overlap(tmp_path, monkeypatch):
    # The check above would pass vacuously if the stand-in could not overlap at all.
    log = _podman_on_path(tmp_path, monkeypatch)
    _start_six_at_once(Runtime("unix:///nonexistent", "t"))
    assert _overlaps(log) > 0


def test_another_process_holding_the_lock_makes_a_creation_wait(tmp_path, monkeypatch):
    log = _podman_on_path(tmp_path, monkeypatch)
    lock = tmp_path / "create.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            f"fd = os.open({str(lock)!r}, os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('held', flush=True)\n"
            "time.sleep(0.5)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    started = time.monotonic()
    Runtime("unix:///nonexistent", "t", create_lock=lock).run(_spec("job_000000000001"))
    waited = time.monotonic() - started
    holder.wait(10)
    holder.stdout.close()
    assert waited >= 0.3, f"the creation did not wait for the other process ({waited:.2f} s)"
    assert len(log.read_text().splitlines()) == 2


NORMALIZE_STAND_IN = """#!/bin/sh
# `create` answers an id; `start` notes whether the creation lock is free meanwhile.
for arg in "$@"; do
    case $arg in
    create) echo cafe0123; exit 0 ;;
    start)
        if flock -n "{lock}" true; then echo "start: lock free" >> "{log}";
        else echo "start: lock held" >> "{log}"; fi
        exit 0 ;;
    rm) echo "rm" >> "{log}"; exit 0 ;;
    esac
done
exit 1
"""


def test_normalize_runs_its_container_outside_the_creation_lock(tmp_path, monkeypatch):
    # A whole `podman run --rm` under the lock made the next job start wait for it.
    log, lock = tmp_path / "calls.log", tmp_path / "create.lock"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    podman = bin_dir / "podman"
    podman.write_text(NORMALIZE_STAND_IN.format(log=log, lock=lock))
    podman.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    Runtime("unix:///nonexistent", "t", create_lock=lock).normalize("img", "/h", str(tmp_path))
    assert log.read_text().splitlines() == ["start: lock free", "rm"]
