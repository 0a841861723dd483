"""job_limits, job_disk, job_processes on real files and processes; config and request checks."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest
from flashpods_api import config as config_mod
from flashpods_api import job_disk, job_limits, job_processes, validate, workspace_diff
from flashpods_api.errors import ApiError

UNLIMITED = 1 << 60


def test_disk_usage_counts_blocks_and_entries_and_a_hard_linked_file_once(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "data").write_bytes(b"x" * 100_000)
    os.link(tmp_path / "d" / "data", tmp_path / "again")
    (tmp_path / "empty").touch()
    usage = job_disk.disk_usage([tmp_path], UNLIMITED, UNLIMITED)
    assert usage.inodes == 4  # d, d/data, again, empty
    assert 100_000 <= usage.bytes < 2 * 100_000  # the linked file once, plus d's block
    assert not usage.too_deep


def test_disk_usage_never_follows_a_link_out_of_the_tree(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "big").write_bytes(b"y" * 1_000_000)
    job = tmp_path / "job"
    job.mkdir()
    os.symlink(outside, job / "escape")
    usage = job_disk.disk_usage([job, tmp_path / "missing"], UNLIMITED, UNLIMITED)
    assert usage.inodes == 1 and usage.bytes < 1_000_000


def test_disk_usage_stops_once_past_a_limit_and_flags_a_tree_too_deep(tmp_path):
    for i in range(50):
        (tmp_path / f"f{i}").touch()
    assert job_disk.disk_usage([tmp_path], UNLIMITED, 10).inodes == 11
    deep = tmp_path / "deep"
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    os.mkdir("deep", dir_fd=fd)
    # Built on fds: the path itself would pass PATH_MAX.
    for _ in range(job_disk.MAX_DEPTH + 5):
        nxt = os.open("deep" if _ == 0 else "d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = nxt
        os.mkdir("d", dir_fd=fd)
    os.close(fd)
    assert job_disk.disk_usage([deep], UNLIMITED, UNLIMITED).too_deep


def test_tree_usage_counts_a_real_process_tree_and_its_memory():
    script = (
        "x=$(head -c 20000000 /dev/zero | tr '\\0' a); "
        "for i in 1 2 3 4 5; do sleep 30 & done; sleep 30"
    )
    proc = subprocess.Popen(["sh", "-c", script])
    try:
        deadline = time.monotonic() + 20
        while True:
            tasks, anon = job_processes.tree_usage(proc.pid, job_processes.process_table())
            if tasks >= 7 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert tasks >= 7  # sh, 5 background sleeps, the foreground sleep
        assert anon >= 20_000_000  # the shell variable
        assert job_processes.tree_usage(2**22 + 7, job_processes.process_table()) == (0, 0)
    finally:
        subprocess.run(["pkill", "-KILL", "-P", str(proc.pid)], check=False)
        proc.kill()
        proc.wait()


def _config(**limits):
    return config_mod.from_dict({"limits": limits})


def test_a_job_may_lower_the_host_limits_but_not_raise_them():
    cfg = _config(job_memory_mb=512, job_pids=100)
    assert validate.resources({"memory": 256, "pids": 50}, cfg) == {"memory": 256, "pids": 50}
    with pytest.raises(ApiError) as raised:
        validate.resources({"memory": 1024}, cfg)
    assert raised.value.status == 400 and "at most 512 MiB" in raised.value.message
    with pytest.raises(ApiError) as raised:
        validate.resources({"pids": 101}, cfg)
    assert "limits.job_pids" in raised.value.message
    limits = job_limits.for_job(cfg, {"memory": 256})
    assert (limits.memory_mb, limits.pids) == (256, 100)
    assert job_limits.container_resources(cfg, {"resources": {"cpus": 1.0}}) == {
        "cpus": 1.0,
        "memory": 512,
        "pids": 100,
    }


@pytest.mark.parametrize(
    ("limits", "says"),
    [
        ({"job_memory_mb": 2}, "limits.job_memory_mb must be from 6"),
        ({"job_pids": 0}, "limits.job_pids must be a positive number"),
        ({"disk_reserve_bytes": 1024}, "at least 4 MiB"),
    ],
)
def test_bad_limits_in_the_config_are_refused_by_name(limits, says):
    with pytest.raises(config_mod.ConfigError, match=says):
        _config(**limits)


def test_a_host_below_its_reserve_refuses_new_jobs_with_507(tmp_path):
    cfg = config_mod.from_dict(
        {
            "db_path": str(tmp_path / "db.sqlite"),
            "storage": {"workspaces": str(tmp_path), "artifacts": str(tmp_path)},
            "limits": {"disk_reserve_bytes": 1 << 62},
        }
    )
    with pytest.raises(ApiError) as raised:
        validate.job_request({"kind": "worker", "command": "true"}, cfg)
    assert raised.value.status == 507 and raised.value.code == "disk_low"
    assert "reserve" in raised.value.message


@pytest.mark.parametrize(
    ("reason", "says"),
    [
        ("memory_limit", "more than 64 MiB of memory (its memory limit)"),
        ("pids_limit", "more than 32 processes and threads (its pids limit)"),
        ("disk_limit", "(its disk limit, limits.job_disk_bytes)"),
        ("inode_limit", "(its inode limit, limits.job_inodes)"),
        ("depth_limit", "the depth limit"),
        ("disk_full", "disk filled up"),
        ("log_disk", "stored on disk"),
    ],
)
def test_every_stop_reason_has_an_error_that_names_its_limit(reason, says):
    job = {"resources": {"memory": 64, "pids": 32}}
    assert says in job_limits.error_for(reason, job, _config())
    assert reason in job_limits.REASONS


def test_empty_files_are_not_free_against_the_workspace_byte_cap(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    for i in range(100):
        (work / f"e{i:03}").touch()
    summary = workspace_diff.record(None, work, tmp_path / "out", byte_cap=10 * 512)
    assert summary["truncated"] is True and summary["added"] == 100
    assert len(os.listdir(tmp_path / "out" / "files")) == 10


def test_the_change_set_lists_at_most_max_changes_paths(tmp_path, monkeypatch):
    monkeypatch.setattr(workspace_diff, "MAX_CHANGES", 30)
    work = tmp_path / "work"
    work.mkdir()
    for i in range(100):
        (work / f"f{i:03}").write_text("x")
    workspace_diff.record(None, work, tmp_path / "out", byte_cap=UNLIMITED)
    changes = json.loads((tmp_path / "out" / "changes.json").read_text())
    assert len(changes["added"]) == 30 and changes["truncated"] is True


def _fake_proc(root, pid, argv, nspid):
    d = root / str(pid)
    d.mkdir()
    (d / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    (d / "status").write_bytes(b"Name:\tconmon\nNSpid:\t" + nspid.encode() + b"\n")


def test_job_containers_are_found_from_conmon_and_a_forged_conmon_is_ignored(tmp_path):
    proc, logs = tmp_path / "proc", tmp_path / "logs"
    proc.mkdir()
    argv = ["/usr/bin/conmon", "-n", "job_aaaaaaaaaaaa", "-l", f"k8s-file:{logs}/a.ctr.log"]
    _fake_proc(proc, 100, argv, "100")
    # Another instance's container (its log elsewhere), and a job's own process that
    # calls itself conmon and names another job: neither is taken.
    other = ["/usr/bin/conmon", "-n", "job_bbbbbbbbbbbb", "-l", "k8s-file:/elsewhere/b.ctr.log"]
    _fake_proc(proc, 200, other, "200")
    forged = ["conmon", "-n", "job_cccccccccccc", "-l", f"k8s-file:{logs}/c.ctr.log"]
    _fake_proc(proc, 300, forged, "300 7")
    table = {100: (1, 1), 101: (100, 1), 200: (1, 1), 201: (200, 1), 300: (299, 1), 301: (300, 1)}
    found = job_processes.job_containers(table, {100, 200, 300}, logs, proc=str(proc))
    assert found == {"job_aaaaaaaaaaaa": 101}
