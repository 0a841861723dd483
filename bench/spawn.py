"""P1 cold spawn and P2 warm start: POST /jobs until the job runs, versus `podman run -d`.

Samples of Flashpods and of the bare tool alternate, so both see the same noise.
"""

from __future__ import annotations

import time

from .common import (
    WORKER_IMAGE,
    Api,
    Result,
    bare_podman_run,
    bench_host,
    latency_row,
)


def _spawn_to_running(api: Api, command: str) -> tuple[float, str]:
    start = time.perf_counter()
    job = api.post_job(command)
    if job["status"] != "running":
        job = api.wait_status(job["id"], {"running"})
    return time.perf_counter() - start, job["id"]


def _measure(host, api: Api, samples: int, between=None) -> tuple[list[float], list[float]]:
    """Alternating samples of bare `podman run -d` and POST /jobs until running."""
    ours: list[float] = []
    bare: list[float] = []
    for _ in range(samples):
        start = time.perf_counter()
        container = bare_podman_run(host, "--userns=keep-id", WORKER_IMAGE, "sleep", "600")
        bare.append(time.perf_counter() - start)
        seconds, job_id = _spawn_to_running(api, "sleep 600")
        ours.append(seconds)
        # Clean up between samples so neither side pays for a growing container count.
        api.kill(job_id)
        host.podman("rm", "-f", "-t", "0", container)
        if between:
            between()
    return ours, bare


def cold(samples: int) -> Result:
    # The cold path: an empty warm pool, explicitly (users' hosts have one by default).
    with bench_host(max_concurrent_jobs=4, warm_pool={}) as host:
        api = Api(host)
        _measure(host, api, 2)  # warm the image cache and the API's connections
        ours, bare = _measure(host, api, samples)
        mode = host.api_config.get("attestation", "peer")
    what = "cold spawn: POST /jobs to running vs `podman run -d` (same image, same user)"
    notes = f"{samples} alternating samples; attestation {mode}; warm pool off"
    return latency_row("P1", what, ours, bare, 0.80, notes)


def warm(samples: int) -> Result:
    """P2: the warm pool hands a pre-started, pre-labelled container its command."""
    overrides = {"warm_pool": {"worker": 2}}
    with bench_host(max_concurrent_jobs=8, api_overrides=overrides) as host:
        api = Api(host)
        _wait_pool(api, 2)
        ours, bare = _measure(host, api, samples, between=lambda: _wait_pool(api, 1))
        mode = host.api_config.get("attestation", "peer")
    what = "warm start: POST /jobs to running through the warm pool vs `podman run -d`"
    notes = (
        f"{samples} alternating samples; attestation {mode}; warm pool on (2 workers), "
        "refilled between samples"
    )
    return latency_row("P2", what, ours, bare, 0.50, notes)


def _wait_pool(api: Api, at_least: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        health = api.session.get(f"{api.base}/healthz", timeout=30).json()
        ready = health.get("checks", {}).get("warm_pool", {}).get("ready", {}).get("worker", 0)
        if ready >= at_least:
            return
        time.sleep(0.1)
    raise RuntimeError(f"the warm pool did not reach {at_least} ready worker containers")
