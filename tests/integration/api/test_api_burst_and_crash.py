"""Many jobs at once, and the API and reaper killed with SIGKILL in the middle of runs."""

from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from api_it_support import Api, containers, wait_no_containers

pytestmark = pytest.mark.slow


def test_fifty_jobs_at_once_all_finish_and_the_cap_holds(devhost_factory):
    cap = 3
    api = Api(
        devhost_factory(max_concurrent_jobs=cap, api_overrides={"reaper": {"interval_s": 0.2}})
    )
    seen_active: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        # Sample both the records and Podman itself for the whole run.
        while not stop.is_set():
            jobs = api.get("/jobs", params={"limit": 500}).json()["jobs"]
            seen_active.append(sum(j["status"] in ("starting", "running") for j in jobs))
            running = api.host.podman(
                "ps",
                "--filter",
                f"label=flashpods.instance={api.host.settings.instance}",
                "--format",
                "{{.Names}}",
            ).stdout.split()
            seen_active.append(len(running))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(max_workers=25) as pool:
            jobs = list(
                pool.map(
                    lambda n: (n, api.submit(f"echo job {n}; sleep 0.1; exit {n % 7}")), range(50)
                )
            )
        finished = {n: api.wait(job["id"], timeout=240) for n, job in jobs}
    finally:
        stop.set()
        watcher.join()
    for n, job in finished.items():
        assert job["exit_code"] == n % 7, job
        assert job["status"] == ("succeeded" if n % 7 == 0 else "failed")
        assert api.log_text(job["id"]) == f"job {n}\n"
    assert max(seen_active) <= cap, max(seen_active)
    assert max(seen_active) >= 2  # the cap was actually reached, not just never tested
    assert wait_no_containers(api.host) == []


def test_kill_9_of_api_and_reaper_mid_run_loses_nothing(devhost_factory):
    host = devhost_factory(max_concurrent_jobs=4, api_overrides={"reaper": {"interval_s": 0.2}})
    api = Api(host)
    lines = 30
    script = f"i=1; while [ $i -le {lines} ]; do echo line $i; i=$((i+1)); sleep 0.1; done; exit 5"
    jobs = [api.submit(script) for _ in range(6)]  # 4 run, 2 wait in the queue
    short = api.submit("echo quick")
    time.sleep(1.0)
    host.kill("reaper", signal.SIGKILL)
    host.kill("api", signal.SIGKILL)
    # While nothing watches: jobs keep running (conmon keeps writing their logs), some end.
    time.sleep(4.0)
    host.start("api", "reaper")
    api = Api(host)
    for job in jobs:
        done = api.wait(job["id"], timeout=120)
        assert (done["status"], done["exit_code"]) == ("failed", 5), done
        assert api.log_text(job["id"]) == "".join(f"line {i}\n" for i in range(1, lines + 1))
    assert api.wait(short["id"])["status"] == "succeeded"
    assert api.log_text(short["id"]) == "quick\n"
    assert wait_no_containers(host) == []  # no orphan survives the reaper


def test_container_removed_behind_flashpods_back_becomes_lost(devhost_factory):
    host = devhost_factory(api_overrides={"reaper": {"interval_s": 0.2}})
    api = Api(host)
    job = api.submit("echo before; sleep 300")
    api.wait(job["id"], statuses=("running",))
    time.sleep(0.5)
    host.kill("reaper", signal.SIGKILL)
    removed = host.podman("rm", "-f", "-t", "0", job["id"])
    assert removed.returncode == 0, removed.stderr
    host.start("reaper")
    done = api.wait(job["id"], timeout=30)
    assert done["status"] == "lost" and "disappeared" in done["error"]
    assert api.log_text(job["id"]) == "before\n"


def test_orphan_container_without_a_record_is_removed(devhost_factory):
    host = devhost_factory(api_overrides={"reaper": {"interval_s": 0.2}})
    orphan = "job_orphanorphan"
    made = host.podman(
        "run", "-d", "--name", orphan, "--label", f"flashpods.instance={host.settings.instance}",
        "localhost/flashpods-worker:latest", "sleep", "300",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    deadline = time.monotonic() + 20
    while orphan in containers(host) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert orphan not in containers(host)
