"""Server-side waits (issue 18): they wake on the job's end, and never starve the API.

Hosts run the reaper with a 60 s tick and no warm pool: a wait that returns within
seconds of the job's end was woken by the end itself (exit watch -> end notice).
"""

from __future__ import annotations

import threading
import time

import pytest
from api_it_support import FINAL, Api

pytestmark = pytest.mark.slow

SLOW_TICK = {"reaper": {"interval_s": 60}, "warm_pool": {}}


def test_every_kind_of_wait_ends_when_the_job_does(devhost_factory):
    api = Api(devhost_factory(api_overrides=SLOW_TICK))
    job = api.submit("echo first; sleep 3; echo last")
    api.wait(job["id"], timeout=30, statuses=("running",))
    results: dict[str, object] = {}

    def follow() -> None:
        with api.get(f"/jobs/{job['id']}/logs", params={"follow": 1}, stream=True) as r:
            results["follow"] = b"".join(r.iter_content(None))
            results["follow_at"] = time.monotonic()

    def log_wait() -> None:
        # Past "first\n": nothing more until "last\n" arrives.
        r = api.get(f"/jobs/{job['id']}/logs", params={"offset": 6, "wait_s": 30}, timeout=60)
        results["log_wait"] = r.json()

    follower = threading.Thread(target=follow)
    log_waiter = threading.Thread(target=log_wait)
    follower.start()
    log_waiter.start()
    started = time.monotonic()
    answer = api.get(f"/jobs/{job['id']}", params={"wait_s": 30}, timeout=60)
    waited = time.monotonic() - started
    follower.join(60)
    log_waiter.join(60)
    assert answer.status_code == 200, answer.text
    assert answer.json()["job"]["status"] == "succeeded"
    # The job runs ~3 s; the tick would take 60 s; the wait's own limit is 30 s.
    assert waited < 20, waited
    assert results["follow"] == b"first\nlast\n"
    assert results["follow_at"] - started < 20
    assert results["log_wait"]["data"] == "last\n", results["log_wait"]
    # A wait on a final job answers at once, as does an unknown one (404).
    assert api.get(f"/jobs/{job['id']}", params={"wait_s": 30}, timeout=10).status_code == 200
    missing = api.get("/jobs/job_aaaaaaaaaaaa", params={"wait_s": 30}, timeout=10)
    assert missing.status_code == 404
    bad = api.get(f"/jobs/{job['id']}", params={"wait_s": "31"})
    assert bad.status_code == 400 and bad.json()["code"] == "bad_wait_s"


def test_many_waiting_clients_do_not_starve_a_spawn(devhost_factory):
    """More waiting clients than the API has threads (2 workers x 64): the waits past
    each worker's budget answer at once, and a spawn still goes through at once."""
    host = devhost_factory(api_overrides=SLOW_TICK)
    api = Api(host)
    sleeper = api.submit("sleep 600")
    api.wait(sleeper["id"], timeout=30, statuses=("running",))
    clients = 300
    answers: list[tuple[float, dict]] = []
    lock = threading.Lock()

    def wait_for_it() -> None:
        mine = Api(host)  # a connection of its own, as separate agents would have
        r = mine.get(f"/jobs/{sleeper['id']}", params={"wait_s": 30}, timeout=90)
        with lock:
            answers.append((time.monotonic(), r.json()["job"]))

    waiters = [threading.Thread(target=wait_for_it) for _ in range(clients)]
    for t in waiters:
        t.start()
    time.sleep(3)  # all of them sent, the budget's worth waiting
    started = time.monotonic()
    spawned = api.submit("true")
    spawn_s = time.monotonic() - started
    # With every thread waiting this would queue behind the 30 s waits.
    assert spawn_s < 15, spawn_s
    assert api.wait(spawned["id"], timeout=30)["status"] == "succeeded"
    answered_early = len(answers)
    assert answered_early >= clients - 2 * (64 - 16), answered_early
    killed_at = time.monotonic()
    api.post(f"/jobs/{sleeper['id']}/kill")
    for t in waiters:
        t.join(90)
    assert len(answers) == clients
    late = [(at, job) for at, job in answers if at >= killed_at]
    # Every client still waiting at the kill was woken by the end, long before 30 s.
    assert late and all(job["status"] in FINAL for _, job in late), late[:3]
    assert max(at for at, _ in late) - killed_at < 20
