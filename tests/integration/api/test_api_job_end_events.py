"""A job's end is recorded when it happens (issue 18), not at the reaper's next tick.

Every host here runs the reaper with a 60 s tick and no warm pool: an end seen within
seconds was seen by the exit watch (exits.py), and the tick is left as the safety net,
which the second test proves by freezing and killing the reaper around a job's end.
"""

from __future__ import annotations

import signal
import subprocess
import time

import pytest
from api_it_support import FINAL, Api

pytestmark = pytest.mark.slow

SLOW_TICK = {"reaper": {"interval_s": 60}, "warm_pool": {}}
# Far below the 60 s tick, far above any event path on a loaded machine.
SOON_S = 15


def _until_final(api: Api, job_id: str, within: float) -> dict:
    deadline = time.monotonic() + within
    while True:
        job = api.job(job_id)
        if job["status"] in FINAL or time.monotonic() > deadline:
            return job
        time.sleep(0.05)


def test_a_jobs_end_is_recorded_at_once_with_a_60_s_tick(devhost_factory):
    api = Api(devhost_factory(api_overrides=SLOW_TICK))
    ok = api.submit("echo out; echo changed > /workspace/new.txt")
    bad = api.submit("echo err >&2; exit 3")
    ok_job = _until_final(api, ok["id"], SOON_S)
    bad_job = _until_final(api, bad["id"], SOON_S)
    # Exit code, final log and workspace changes all recorded with the end.
    assert ok_job["status"] == "succeeded", ok_job
    assert ok_job["exit_code"] == 0
    assert ok_job["workspace_changes"]["added"] == 1, ok_job["workspace_changes"]
    assert api.log_text(ok["id"]) == "out\n"
    assert bad_job["status"] == "failed", bad_job
    assert bad_job["exit_code"] == 3
    assert api.log_text(bad["id"]) == "err\n"


def test_an_end_the_watch_missed_is_recorded_by_the_tick(devhost_factory):
    """The reaper (and its watch) frozen while the job ends, then killed with the close
    event still unread: nothing watched the end. The restarted reaper's first tick
    records it, exit code and log intact."""
    host = devhost_factory(api_overrides=SLOW_TICK)
    api = Api(host)
    job = api.submit("sleep 2; echo done; exit 4")
    api.wait(job["id"], timeout=30, statuses=("running",))
    host.kill("reaper", signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 60
        while _container_state(host, job["id"]) not in ("exited", "stopped"):
            assert time.monotonic() < deadline, "the job's container never ended"
            time.sleep(0.2)
        time.sleep(0.5)
        assert api.job(job["id"])["status"] == "running"  # nobody recorded it
    finally:
        host.kill("reaper", signal.SIGKILL)
    host.start("reaper")
    ended = _until_final(api, job["id"], SOON_S)
    assert ended["status"] == "failed", ended
    assert ended["exit_code"] == 4
    assert api.log_text(job["id"]) == "done\n"


def _container_state(host, name: str) -> str:
    out = host.podman("inspect", "--format", "{{.State.Status}}", name, in_netns=False)
    return out.stdout.strip()


def test_forged_log_closes_do_not_end_a_running_job(devhost_factory):
    """An escaped process (the container uid) opens and closes running jobs' live logs
    and plants live-log names of its own: every close is only a hint, checked with
    Podman, so the running job stays running and is recorded when it really ends."""
    host = devhost_factory(api_overrides=SLOW_TICK)
    api = Api(host)
    job = api.submit("sleep 4; echo real-end")
    api.wait(job["id"], timeout=30, statuses=("running",))
    logs = host.api_config["storage"]["logs"]
    forge = (
        f"for i in $(seq 200); do : >> {logs}/{job['id']}.ctr.log; "
        f": > {logs}/job_aaaaaaaaaaaa.ctr.log; done"
    )
    subprocess.run(["runuser", "-u", "flashpods", "--", "sh", "-c", forge], check=True, timeout=60)
    assert api.job(job["id"])["status"] == "running"
    ended = _until_final(api, job["id"], SOON_S + 5)
    assert ended["status"] == "succeeded", ended
    assert api.log_text(job["id"]) == "real-end\n"
    assert "Traceback" not in host.log("reaper", 200)
