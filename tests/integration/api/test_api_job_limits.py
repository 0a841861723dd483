"""Every job runs under memory, pids, disk-byte and inode limits, also on rootless cgroup v1.

Hostile jobs, one per limit, run side by side on one real dev host with an ordinary job:
each hostile one ends `failed` with an error that names its limit, the ordinary one
succeeds. On this host (rootless Podman 4.3, cgroup v1) the kernel ignores --memory and
--pids-limit, so what stops the first two is the reaper's polling (docs/security.md,
"Per-job limits").
"""

from __future__ import annotations

import pytest
from api_it_support import Api, wait_no_containers

pytestmark = pytest.mark.slow

# Each hostile job would otherwise run until its own timeout: that is the failure mode.
HOSTILE_TIMEOUT_S = 90

HOSTILE = {
    # A 300 MB shell variable held while sleeping: past a 64 MiB memory limit.
    "memory limit": (
        "x=$(head -c 300000000 /dev/zero | tr '\\0' a); echo held; sleep 300",
        {"memory": 64},
    ),
    # 200 sleeping children (bounded, not a real fork bomb: the nproc rlimit is per uid
    # and shared with every other job on the host) past a pids limit of 64.
    "pids limit": (
        "i=0; while [ $i -lt 200 ]; do sleep 300 & i=$((i+1)); done; echo forked; wait",
        {"pids": 64},
    ),
    # 60 MB in /workspace past the host's 20 MB disk limit.
    "disk limit": ("head -c 60000000 /dev/zero > /workspace/big; echo wrote; sleep 300", {}),
    # 6,000 empty files (0 bytes each) past the host's 3,000-inode limit.
    "inode limit": (
        "mkdir /workspace/d && cd /workspace/d && i=0; "
        "while [ $i -lt 6000 ]; do : > f$i; i=$((i+1)); done; echo made; sleep 300",
        {},
    ),
    # 300 nested directories, past the walk's depth limit of 256.
    "depth limit": (
        "cd /workspace && i=0; while [ $i -lt 300 ]; do mkdir d && cd d; i=$((i+1)); done; "
        "echo deep; sleep 300",
        {},
    ),
    # 5,000 empty lines: 5,000 bytes of output (under the 20,000-byte log cap), but each
    # is stored with Podman's ~40-byte line header: ~200 KB on disk, past twice the cap.
    "stored on disk": (
        "i=0; while [ $i -lt 5000 ]; do echo; i=$((i+1)); done; sleep 300",
        {},
    ),
}


def test_each_limit_ends_its_job_failed_naming_the_limit_while_others_finish(devhost_factory):
    host = devhost_factory(
        max_concurrent_jobs=len(HOSTILE) + 1,
        api_overrides={
            "reaper": {"interval_s": 0.2},
            "limits": {"job_disk_bytes": 20_000_000, "job_inodes": 3000, "log_bytes": 20000},
        },
    )
    api = Api(host)
    jobs = {
        name: api.submit(command, resources=resources, timeout_s=HOSTILE_TIMEOUT_S)["id"]
        for name, (command, resources) in HOSTILE.items()
    }
    ordinary = api.submit("sleep 3; echo fine")["id"]
    done = api.wait(ordinary, timeout=120)
    assert done["status"] == "succeeded", done
    assert api.log_text(ordinary) == "fine\n"
    for name, job_id in jobs.items():
        job = api.wait(job_id, timeout=HOSTILE_TIMEOUT_S + 60)
        assert job["status"] == "failed" and name in (job["error"] or ""), (name, job)
    # A later job still runs to the end: nothing the hostile ones did stayed behind.
    after = api.submit("echo after")["id"]
    assert api.wait(after, timeout=60)["status"] == "succeeded"
    assert wait_no_containers(host) == []
    # The disk-hungry jobs' workspaces are gone from the host.
    assert not any((host.paths.workspaces / job_id).exists() for job_id in jobs.values())
