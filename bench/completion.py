"""P8, P8w, P8o: the whole life of a job, as an agent waits for it (issue 18).

P8  POST /jobs -> `succeeded` for `true`, cold (warm pool off), vs `podman run --rm`.
P8w the same through the warm pool.
P8o job end -> a waiting get_job_output (the MCP client's read_output with wait_s)
    returns. The end is conmon closing the job's live log (what the reaper's exit watch
    sees too; 2-9 ms after the container's last write), watched here with inotify.

The client waits the way an agent does: one server-side wait (`GET /jobs/<id>?wait_s=`)
where the API has it, a 10 ms poll where it does not (an older API ignores wait_s).
Every row states its attestation mode and whether the warm pool is on.
"""

from __future__ import annotations

import ctypes
import os
import select
import struct
import tempfile
import threading
import time
from pathlib import Path

from flashpods_mcp.config import Settings
from flashpods_mcp.operations import Flashpods

from .common import (
    FINAL,
    WORKER_IMAGE,
    Api,
    Result,
    bench_host,
    latency_row,
    median,
    ms,
    percentile,
)

COLD = {"warm_pool": {}}  # explicit: a default-on pool would make a "cold" run warm
WARM = {"warm_pool": {"worker": 2}}


def _mode(host) -> str:
    return str(host.api_config.get("attestation", "peer"))


def _until_final(api: Api, job_id: str) -> dict:
    deadline = time.monotonic() + 120
    while True:
        response = api.session.get(f"{api.base}/jobs/{job_id}", params={"wait_s": "30"}, timeout=90)
        response.raise_for_status()
        job = response.json()["job"]
        if job["status"] in FINAL:
            return job
        if time.monotonic() > deadline:
            raise RuntimeError(f"{job_id} still {job['status']}")
        time.sleep(0.01)  # reached only when the API did not wait


def _bare_run_rm(host) -> None:
    label = f"flashpods.instance={host.settings.instance}"
    done = host.podman("run", "--rm", "--userns=keep-id", "--label", label, WORKER_IMAGE, "true")
    if done.returncode != 0:
        raise RuntimeError(f"podman run --rm failed: {done.stderr.strip()}")


def _life(api: Api) -> float:
    start = time.perf_counter()
    job = api.post_job("true")
    job = _until_final(api, job["id"])
    elapsed = time.perf_counter() - start
    if job["status"] != "succeeded":
        raise RuntimeError(f"`true` ended {job['status']}: {job.get('error')}")
    return elapsed


def _measure(host, api: Api, samples: int, between=None) -> tuple[list[float], list[float]]:
    ours: list[float] = []
    bare: list[float] = []
    for _ in range(samples):
        start = time.perf_counter()
        _bare_run_rm(host)
        bare.append(time.perf_counter() - start)
        ours.append(_life(api))
        if between:
            between()
    return ours, bare


def cold(samples: int) -> Result:
    with bench_host(max_concurrent_jobs=4, api_overrides=COLD) as host:
        api = Api(host)
        _measure(host, api, 2)  # the image cache, the API's connections, the probe
        ours, bare = _measure(host, api, samples)
        mode = _mode(host)
    what = "job life: POST /jobs -> succeeded for `true`, cold, vs `podman run --rm`"
    notes = f"{samples} alternating samples; attestation {mode}; warm pool off"
    return latency_row("P8", what, ours, bare, 1.0, notes)


def warm(samples: int) -> Result:
    from .spawn import _wait_pool

    with bench_host(max_concurrent_jobs=8, api_overrides=WARM) as host:
        api = Api(host)
        _wait_pool(api, 2)
        ours, bare = _measure(host, api, samples, between=lambda: _wait_pool(api, 1))
        mode = _mode(host)
    what = "job life through the warm pool: POST /jobs -> succeeded for `true` vs `podman run --rm`"
    notes = (
        f"{samples} alternating samples; attestation {mode}; warm pool on (2 workers), "
        "refilled between samples"
    )
    return latency_row("P8w", what, ours, bare, 0.3, notes)


# -- P8o ------------------------------------------------------------------------------

_libc = ctypes.CDLL("libc.so.6", use_errno=True)
_EVENT = struct.Struct("iIII")
IN_CLOSE_WRITE = 0x008


class _Closes:
    """When each live log in a directory was last closed after writing (inotify)."""

    def __init__(self, directory: Path) -> None:
        self.fd = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0 or _libc.inotify_add_watch(self.fd, bytes(directory), IN_CLOSE_WRITE) < 0:
            raise RuntimeError(f"cannot watch {directory} with inotify")
        self.last: dict[str, float] = {}
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        while not self._stop:
            if not poller.poll(100):
                continue
            now = time.time()
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                continue
            pos = 0
            while pos + _EVENT.size <= len(data):
                _wd, _mask, _cookie, length = _EVENT.unpack_from(data, pos)
                name = data[pos + _EVENT.size : pos + _EVENT.size + length].split(b"\0")[0]
                pos += _EVENT.size + length
                self.last[name.decode()] = now

    def close(self) -> None:
        self._stop = True
        self._thread.join()
        os.close(self.fd)


def output_wakeup(samples: int) -> Result:
    """P8o: a job that writes nothing ends; the waiting read_output must return at once."""
    with tempfile.TemporaryDirectory() as tmp, bench_host(api_overrides=COLD) as host:
        token = Path(tmp) / "token"
        token.write_text(host.api_token)
        settings = Settings(
            api_url=host.api_url,
            rsync_url=host.rsync_url,
            config_dir=Path(tmp),
            cache_dir=Path(tmp),
            home=Path(tmp),
            token_file=token,
        )
        flashpods = Flashpods(settings)
        api = Api(host)
        logs_dir = Path(host.api_config["storage"]["logs"])
        closes = _Closes(logs_dir)
        gaps: list[float] = []
        try:
            for i in range(samples + 1):
                job = api.post_job("sleep 1")
                api.wait_status(job["id"], {"running"})
                out = flashpods.read_output(job["id"], offset=0, wait_s=60)
                returned = time.time()
                if not out.final:
                    raise RuntimeError(f"read_output returned before the end: {out}")
                ended = closes.last.get(f"{job['id']}.ctr.log")
                if ended is None:
                    raise RuntimeError("the job's live log was never seen closed")
                if i:  # the first sample warms the connections
                    gaps.append(returned - ended)
        finally:
            closes.close()
        mode = _mode(host)
    p50 = median(gaps)
    return Result(
        id="P8o",
        what="job end (conmon closes its log) -> a waiting get_job_output returns",
        flashpods=f"median {ms(p50)}, p90 {ms(percentile(gaps, 90))}",
        bare="-",
        ratio=None,
        target="<= 20 ms median",
        met=p50 <= 0.020,
        notes=f"{samples} samples; attestation {mode}; warm pool off; reaper tick 1 s",
    )
