"""What every benchmark shares: a dev host, an API session, timing and statistics.

Every figure is a ratio against the bare tool measured in the same run on the same
host (these machines are shared and noisy: absolute times mean little, ratios hold).
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from flashpods_devhost.host import DevHost
from flashpods_devhost.pytest_plugin import new_settings

WORKER_IMAGE = "localhost/flashpods-worker:latest"
FINAL = {"succeeded", "failed", "timed_out", "killed", "lost"}


@dataclass
class Result:
    """One row of docs/benchmarks.md."""

    id: str
    what: str
    flashpods: str  # the measured figure, human readable
    bare: str  # the bare tool's figure from the same run
    ratio: float | None
    target: str  # e.g. "<= 1.10"
    met: bool | None
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile; good enough for tens to thousands of samples."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no samples")
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def median(values: list[float]) -> float:
    return statistics.median(values)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def latency_row(
    rid: str, what: str, ours: list[float], bare: list[float], target: float, notes: str
) -> Result:
    """A row comparing two sets of durations by their medians (lower is better)."""
    ratio = median(ours) / median(bare)
    return Result(
        id=rid,
        what=what,
        flashpods=f"median {ms(median(ours))}, p90 {ms(percentile(ours, 90))}",
        bare=f"median {ms(median(bare))}, p90 {ms(percentile(bare, 90))}",
        ratio=ratio,
        target=f"<= {target:.2f}",
        met=ratio <= target,
        notes=notes,
    )


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


@contextlib.contextmanager
def bench_host(**overrides: Any) -> Iterator[DevHost]:
    """A dev host of its own for one benchmark, stopped and removed afterwards."""
    host = DevHost(new_settings(**overrides))
    try:
        host.start()
        yield host
    finally:
        host.stop(remove_root=True)


class Api:
    """A thin, keep-alive API client for benchmarks (the MCP client is measured in P3)."""

    def __init__(self, host: DevHost) -> None:
        self.base = host.api_url
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {host.api_token}"

    def post_job(self, command: str, **extra: Any) -> dict[str, Any]:
        body = {"kind": "worker", "command": command, **extra}
        response = self.session.post(f"{self.base}/jobs", json=body, timeout=120)
        response.raise_for_status()
        return response.json()["job"]

    def job(self, job_id: str) -> dict[str, Any]:
        response = self.session.get(f"{self.base}/jobs/{job_id}", timeout=60)
        response.raise_for_status()
        return response.json()["job"]

    def wait_status(self, job_id: str, wanted: set[str], timeout: float = 300) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job["status"] in wanted:
                return job
            if job["status"] in FINAL or time.monotonic() > deadline:
                raise RuntimeError(
                    f"job {job_id} is {job['status']}, wanted {sorted(wanted)}: {job.get('error')}"
                )
            time.sleep(0.01)

    def kill(self, job_id: str) -> None:
        self.session.post(f"{self.base}/jobs/{job_id}/kill", timeout=120).raise_for_status()

    def kill_and_clean(self, host: DevHost, job_id: str, timeout: float = 120) -> None:
        """Kill the job and wait until it is final and its container removed, as a bare
        `podman rm -f` is done before the bare side's next sample."""
        self.kill(job_id)
        self.wait_status(job_id, set(FINAL), timeout)
        deadline = time.monotonic() + timeout
        while host.podman(
            "ps", "-aq", "--filter", f"label=flashpods.job={job_id}", in_netns=False
        ).stdout.strip():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the container of {job_id} was not removed")
            time.sleep(0.05)


def bare_podman_run(host: DevHost, *args: str) -> str:
    """`podman run -d` as the sandbox user, labelled so the host's stop() removes it."""
    done = host.podman(
        "run", "-d", "--label", f"flashpods.instance={host.settings.instance}", *args
    )
    if done.returncode != 0:
        raise RuntimeError(f"podman run failed: {done.stderr.strip()}")
    return done.stdout.strip()


def rss_kib(pids: list[int]) -> int:
    """Resident memory of processes and all their descendants, in KiB."""
    seen: set[int] = set()
    todo = list(pids)
    total = 0
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{pid}/task"):
                children = Path(f"/proc/{pid}/task/{task}/children").read_text().split()
                todo.extend(int(c) for c in children)
    return total


def machine() -> str:
    cpu = "unknown cpu"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    podman = subprocess.run(["podman", "--version"], capture_output=True, text=True).stdout
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    return (
        f"{platform.node()}: {os.cpu_count()} cores ({cpu}), {mem_kib // 1024 // 1024} GiB, "
        f"kernel {platform.release()}, {podman.strip()}, Python {platform.python_version()}"
    )
