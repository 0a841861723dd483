"""P4 scale: many running jobs, a burst through the queue, polling latency, memory."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from .common import FINAL, Api, Result, bench_host, median, ms, percentile, rss_kib


def concurrent_running(count: int) -> Result:
    """`count` jobs running at once (sleeping), all started through the API."""
    with bench_host(max_concurrent_jobs=count, queue_limit=count * 2) as host:
        api = Api(host)
        start = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            jobs = list(pool.map(lambda _: api.post_job("sleep 600")["id"], range(count)))
        for job_id in jobs:
            api.wait_status(job_id, {"running"}, timeout=600)
        elapsed = time.perf_counter() - start
        running = sum(1 for j in jobs if api.job(j)["status"] == "running")
        memory = _service_memory(host)
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(api.kill, jobs))
    return Result(
        id="P4a",
        what=f"{count} concurrent running jobs",
        flashpods=f"{running}/{count} running after {elapsed:.1f} s",
        bare="",
        ratio=None,
        target=f"{count} running",
        met=running == count,
        notes=memory,
    )


def burst(count: int, cap: int) -> Result:
    """`count` short jobs at once through a queue capped at `cap` running."""
    with bench_host(max_concurrent_jobs=cap, queue_limit=count + 10) as host:
        api = Api(host)
        peak = 0
        stop = threading.Event()

        def watch_cap() -> None:
            # Ground truth in one snapshot: containers of this host that Podman runs.
            nonlocal peak
            label = f"label=flashpods.instance={host.settings.instance}"
            while not stop.is_set():
                ps = host.podman("ps", "-q", "--filter", label, "--filter", "status=running")
                peak = max(peak, len(ps.stdout.split()))
                time.sleep(0.05)

        watcher = threading.Thread(target=watch_cap, daemon=True)
        watcher.start()
        start = time.perf_counter()
        with ThreadPoolExecutor(16) as pool:
            jobs = list(pool.map(lambda i: api.post_job(f"exit {i % 3}")["id"], range(count)))
        finals = [_wait_final(api, j) for j in jobs]
        elapsed = time.perf_counter() - start
        stop.set()
        watcher.join()
    wrong = sum(
        1
        for i, job in enumerate(finals)
        if job["exit_code"] != i % 3 or job["status"] not in ("succeeded", "failed")
    )
    return Result(
        id="P4b",
        what=f"{count}-job burst through the queue, cap {cap}",
        flashpods=f"{count - wrong}/{count} right exit codes in {elapsed:.1f} s; "
        f"peak running containers {peak}",
        bare="",
        ratio=None,
        target=f"0 failures, peak running containers <= {cap}",
        met=wrong == 0 and peak <= cap,
    )


def polling(pollers: int, requests_each: int) -> Result:
    """GET /jobs/<id> latency under `pollers` concurrent clients vs GET /healthz's floor."""
    with bench_host(max_concurrent_jobs=4) as host:
        api = Api(host)
        job_id = api.post_job("sleep 600")["id"]

        def run(path: str) -> list[float]:
            def one_client(_: int) -> list[float]:
                session = Api(host).session
                samples = []
                for _ in range(requests_each):
                    start = time.perf_counter()
                    session.get(f"{api.base}{path}", timeout=60).raise_for_status()
                    samples.append(time.perf_counter() - start)
                return samples

            with ThreadPoolExecutor(pollers) as pool:
                return [s for chunk in pool.map(one_client, range(pollers)) for s in chunk]

        floor = run("/healthz")
        ours = run(f"/jobs/{job_id}")
        api.kill(job_id)
    ratio = percentile(ours, 99) / percentile(floor, 99)
    return Result(
        id="P4c",
        what=f"GET /jobs/<id> at {pollers} concurrent pollers vs GET /healthz on the same server",
        flashpods=f"p50 {ms(median(ours))}, p99 {ms(percentile(ours, 99))}",
        bare=f"p50 {ms(median(floor))}, p99 {ms(percentile(floor, 99))}",
        ratio=ratio,
        target="p99 <= 2x",
        met=ratio <= 2.0,
        notes=f"{pollers * requests_each} requests each",
    )


def _wait_final(api: Api, job_id: str, timeout: float = 900) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = api.job(job_id)
        if job["status"] in FINAL:
            return job
        time.sleep(0.2)
    raise RuntimeError(f"job {job_id} did not finish in {timeout} s")


def _service_memory(host) -> str:
    parts = []
    for name in ("api", "reaper"):
        service = host._services.get(name)  # the launcher's own record of what it started
        if service and service.pid:
            parts.append(f"{name} RSS {rss_kib([service.pid]) // 1024} MiB")
    return ", ".join(parts)
