"""A job that fills the host's disk: it fails, others finish, the host frees the space and
the database loses nothing (docs/security.md, "A full disk").

The whole state directory (database, workspaces, artifacts, logs) is on a 64 MiB tmpfs
mounted for the test, so "full" is real: the job's writes end in ENOSPC.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sqlite3
import time
from pathlib import Path

import pytest
from api_it_support import Api, wait_no_containers
from small_disk import mounted

pytestmark = [pytest.mark.slow, pytest.mark.root]

MIB = 1024 * 1024
DISK = 64 * MIB
RESERVE = 8 * MIB  # limits.disk_reserve_bytes: the ballast is half of it
BALLAST = "disk-reserve.ballast"


@pytest.fixture
def small_disk():
    # Outside the test base: its stale-root sweep must never see the mount point.
    name = f"/var/tmp/flashpods-small-disk-{secrets.token_hex(4)}"
    service_logs = Path(name + "-service-logs")
    with mounted(Path(name), DISK) as mount:
        # The services' own logs stay off the small disk: a failure report must show
        # what they said while it was full.
        service_logs.mkdir(mode=0o755)
        (mount / "host").mkdir(mode=0o755)
        (mount / "host" / "log").symlink_to(service_logs)
        try:
            yield mount
        finally:
            shutil.rmtree(service_logs)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.1)


# small_disk first: it is set up before the dev host and torn down after it.
def test_a_job_that_fills_the_disk_fails_and_the_host_recovers(small_disk, devhost_factory):
    host = devhost_factory(
        root=small_disk / "host",
        max_concurrent_jobs=3,
        api_overrides={
            "reaper": {"interval_s": 0.2},
            "limits": {"disk_reserve_bytes": RESERVE, "log_bytes": MIB},
        },
    )
    api = Api(host)
    ballast = host.paths.db_dir / BALLAST
    wait_for(ballast.exists, 20, "the reaper allocates the ballast")
    assert ballast.stat().st_blocks * 512 >= RESERVE // 2

    survivor = api.submit("sleep 8; echo survivor")["id"]
    filler = api.submit(
        "head -c 200000000 /dev/zero > /workspace/fill; echo filled; sleep 300", timeout_s=60
    )["id"]
    done = api.wait(filler, timeout=90)
    assert done["status"] == "failed", done
    assert "disk filled up" in done["error"] and "removed" in done["error"], done
    # Its log is kept; the line it printed may not be: conmon got ENOSPC for it too.
    assert api.log_text(filler) in ("", "filled\n")
    assert not (host.paths.workspaces / filler).exists()

    kept = api.wait(survivor, timeout=60)
    assert kept["status"] == "succeeded", kept
    assert api.log_text(survivor) == "survivor\n"
    # The space is back, the ballast with it, and new jobs run.
    wait_for(ballast.exists, 20, "the ballast is allocated again")
    assert free_bytes(small_disk) > RESERVE
    later = api.submit("echo later")["id"]
    assert api.wait(later, timeout=60)["status"] == "succeeded"

    # Below the reserve (filled from outside any job), a new job is refused with 507.
    hog = small_disk / "hog"
    with open(hog, "wb") as fh:
        fh.write(b"\0" * (free_bytes(small_disk) - RESERVE // 2 - MIB))
    refused = api.post("/jobs", {"kind": "worker", "command": "echo no"})
    assert refused.status_code == 507, refused.text
    assert refused.json()["code"] == "disk_low" and "reserve" in refused.json()["error"]
    hog.unlink()
    again = api.submit("echo again")["id"]
    assert api.wait(again, timeout=60)["status"] == "succeeded"
    assert wait_no_containers(host) == []

    # Nothing in the database is lost: every job and its whole log is there.
    ids = {survivor, filler, later, again}
    listed = api.get("/jobs", params={"limit": 500}).json()["jobs"]
    assert ids <= {job["id"] for job in listed}
    for job_id, text in ((survivor, "survivor\n"), (later, "later\n"), (again, "again\n")):
        assert api.log_text(job_id) == text
    db = sqlite3.connect(host.paths.db)  # a consistent snapshot beside the running host
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        rows = dict(db.execute("SELECT id, status FROM jobs"))
    finally:
        db.close()
    assert {rows[i] for i in ids - {filler}} == {"succeeded"} and rows[filler] == "failed"
