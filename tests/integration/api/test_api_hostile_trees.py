"""A job that leaves a very deep directory tree cannot wedge the reaper (issue 14, item 1).

Before the fix, `os.fwalk` and `shutil.rmtree` recursed once per level: a job that left
~1,100 nested directories in /artifacts made `Engine.finish` raise on every tick, so no
later job was ever finished or started, /healthz stayed green, and a restart did not help
(the tree is still on disk). Here the tree is already on disk when the reaper starts.
"""

from __future__ import annotations

import sqlite3
import time

import pytest
from api_it_support import Api, wait_no_containers

pytestmark = pytest.mark.slow

# 100 levels per `mkdir -p`/`cd -P`: one `cd` per level costs a getcwd of the whole
# depth each time (quadratic); `-P`: the shell keeps no logical path past PATH_MAX.
DEEP = (
    "set -e; p=d; i=1; while [ $i -lt 100 ]; do p=$p/d; i=$((i+1)); done; "
    "for top in /artifacts:11 /workspace:50; do cd ${top%%:*}; n=${top##*:}; i=0; "
    "while [ $i -lt $n ]; do mkdir -p $p; cd -P $p; i=$((i+1)); done; "
    "echo leaf > leaf.txt; done; echo made"
)


def _exited(host, job_id: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        state = host.podman("inspect", "--format", "{{.State.Status}}", job_id).stdout.strip()
        if state == "exited":
            return
        assert time.monotonic() < deadline, f"{job_id} still {state!r}"
        time.sleep(0.2)


def test_deep_trees_on_disk_at_reaper_start_do_not_wedge_it(devhost_factory):
    host = devhost_factory(
        api_overrides={"reaper": {"interval_s": 0.2}},
    )
    api = Api(host)
    # The reaper is down while the job builds its trees and exits (the API starts a job
    # itself when a slot is free): when it comes back, the trees are already there.
    host.kill("reaper")
    deep = api.submit(DEEP)
    _exited(host, deep["id"])
    host.start("reaper")
    after = api.submit("echo after")

    done = api.wait(deep["id"], timeout=120)
    assert done["status"] == "failed", done
    assert "deeper than" in done["error"] and "/artifacts" in done["error"], done["error"]
    assert "made" in api.log_text(deep["id"])
    assert done["workspace_changes"]["incomplete"], done["workspace_changes"]
    assert api.wait(after["id"], timeout=60)["status"] == "succeeded"
    assert api.get("/healthz").status_code == 200

    # The listing and the tar stop at the depth limit with a reason instead of failing.
    listing = api.get(f"/jobs/{deep['id']}/artifacts")
    assert listing.status_code == 200, listing.text
    reasons = [s["reason"] for s in listing.json()["skipped"]]
    assert any("deeper than" in r for r in reasons), reasons
    assert api.get(f"/jobs/{deep['id']}/artifacts.tar").status_code == 200

    # The workspace goes with the job's end: right after its final record, by the thread
    # that recorded it (opening up and removing 5,000 levels takes a moment, and the job
    # reads as final meanwhile). The artifacts go with retention: expire them now, while
    # the reaper is down again, so its restart meets the tree on disk once more.
    deadline = time.monotonic() + 60
    while (host.paths.workspaces / deep["id"]).exists():
        assert time.monotonic() < deadline, "the deep workspace was never removed"
        time.sleep(0.3)
    host.kill("reaper")
    with sqlite3.connect(host.paths.db) as db:
        db.execute("UPDATE jobs SET artifacts_expire_at = 1 WHERE id = ?", (deep["id"],))
    host.start("reaper")
    deadline = time.monotonic() + 60
    while (host.paths.artifacts / deep["id"]).exists() or api.job(deep["id"])[
        "artifacts_available"
    ]:
        assert time.monotonic() < deadline, "the deep artifacts tree was never removed"
        time.sleep(0.3)
    assert api.get("/healthz").status_code == 200
    assert wait_no_containers(host) == []
