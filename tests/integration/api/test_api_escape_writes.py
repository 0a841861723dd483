"""An escape to the container uid cannot make the reaper write as the API user (issue 14, item 3).

`<logs>` is api:flashpods 2770 without the sticky bit, so the container uid (acting on the
host, as an escaped process would: `runuser -u flashpods`) may plant entries there while
its job runs. Before the fix the reaper opened and chmodded `<logs>/.<id>.log.tmp` by
path: a symlink planted under that name made it write the job's output into any file
the API user may write.
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest
from api_it_support import Api

pytestmark = [pytest.mark.slow, pytest.mark.root]

LINES = 3000


def _as_job_uid(*argv: str) -> None:
    subprocess.run(["runuser", "-u", "flashpods", "--", *argv], check=True, timeout=30)


@pytest.mark.parametrize(
    "planted",
    [
        ".{id}.log.tmp",  # the reaper's old temp name: it wrote the log into the target
        "{id}.log",  # a "final log" already there: it was kept and served (the API token)
    ],
)
def test_planted_log_symlink_leaves_its_target_alone(devhost_factory, planted):
    if os.geteuid() != 0:
        pytest.fail("needs root: the API user and the container uid must differ")
    host = devhost_factory()
    api = Api(host)
    acc = host.accounts
    target = host.paths.api_home / "victim.txt"  # only the API user may write it
    target.write_text("precious\n")
    os.chown(target, acc.api.uid, acc.api.gid)
    os.chmod(target, 0o600)
    before = target.stat()

    job = api.submit(
        f"echo start; while [ ! -e /workspace/go ]; do sleep 0.1; done; "
        f"i=0; while [ $i -lt {LINES} ]; do echo line $i; i=$((i+1)); done"
    )
    api.wait(job["id"], statuses=("running",))
    logs = host.paths.logs
    _as_job_uid("ln", "-s", str(target), str(logs / planted.format(id=job["id"])))
    _as_job_uid("touch", str(host.paths.workspaces / job["id"] / "go"))

    done = api.wait(job["id"], timeout=60)
    assert done["status"] == "succeeded", done
    assert target.read_text() == "precious\n"
    after = target.stat()
    assert (after.st_mode, after.st_size, after.st_mtime_ns) == (
        before.st_mode,
        before.st_size,
        before.st_mtime_ns,
    )
    assert host.api_token not in api.log_text(job["id"])
    expected = "start\n" + "".join(f"line {i}\n" for i in range(LINES))
    assert api.log_text(job["id"]) == expected
    assert done["log_bytes"] == len(expected)
    final = logs / f"{job['id']}.log"
    assert not final.is_symlink() and final.stat().st_uid == acc.api.uid


def test_planted_fifo_as_live_log_does_not_hang_the_reaper(devhost_factory):
    if os.geteuid() != 0:
        pytest.fail("needs root: the API user and the container uid must differ")
    host = devhost_factory(api_overrides={"reaper": {"interval_s": 0.2}})
    api = Api(host)
    job = api.submit("echo start; while [ ! -e /workspace/go ]; do sleep 0.1; done; echo end")
    api.wait(job["id"], statuses=("running",))
    live = host.paths.logs / f"{job['id']}.ctr.log"
    # Replace the live log with a FIFO: a plain open() for reading blocks until a writer
    # comes, which would hang the reaper (and every API worker that reads the log).
    _as_job_uid("mv", str(live), str(live) + ".moved")
    _as_job_uid("mkfifo", str(live))
    time.sleep(1)  # a few reaper ticks over the FIFO
    _as_job_uid("touch", str(host.paths.workspaces / job["id"] / "go"))
    assert api.wait(job["id"], timeout=60)["status"] == "succeeded"
    after = api.submit("echo next")
    assert api.wait(after["id"], timeout=60)["status"] == "succeeded"
    assert api.get(f"/jobs/{job['id']}/logs", timeout=10).status_code == 200
    assert api.get("/healthz").status_code == 200


def test_planted_workspace_record_link_is_replaced_not_written_through(devhost_factory):
    """`<artifacts>/<id>.workspace` planted as a link to a directory only the API user may
    write: the reaper builds the record in a directory of its own and renames it in."""
    if os.geteuid() != 0:
        pytest.fail("needs root: the API user and the container uid must differ")
    host = devhost_factory()
    api = Api(host)
    acc = host.accounts
    elsewhere = host.paths.api_home / "elsewhere"
    elsewhere.mkdir()
    os.chown(elsewhere, acc.api.uid, acc.api.gid)
    job = api.submit("while [ ! -e /workspace/go ]; do sleep 0.1; done; echo new > new.txt")
    api.wait(job["id"], statuses=("running",))
    _as_job_uid("ln", "-s", str(elsewhere), str(host.paths.artifacts / f"{job['id']}.workspace"))
    _as_job_uid("touch", str(host.paths.workspaces / job["id"] / "go"))

    done = api.wait(job["id"], timeout=60)
    assert done["status"] == "succeeded", done
    assert list(elsewhere.iterdir()) == []
    record = host.paths.artifacts / f"{job['id']}.workspace"
    assert not record.is_symlink() and record.stat().st_uid == acc.api.uid
    assert done["workspace_changes"]["added"] == 2  # new.txt and the go file
    resp = api.get(f"/jobs/{job['id']}/artifacts/_workspace/files/new.txt")
    assert (resp.status_code, resp.text) == (200, "new\n")
