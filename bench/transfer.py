"""P5 transfer: a 64 MiB log and a 64 MiB artifact tree through the API and the MCP client,
versus a bare loopback copy of the same bytes; and follow latency."""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
from pathlib import Path

from .common import FINAL, Api, Result, bench_host, median, ms, timed

MIB = 1024 * 1024


def bare_loopback_copy(path: Path) -> float:
    """Seconds to move a file's bytes over a loopback TCP socket (sendfile -> recv)."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def serve() -> None:
        conn, _ = server.accept()
        with conn, open(path, "rb") as f:
            conn.sendfile(f)

    thread = threading.Thread(target=serve, daemon=True)
    start = time.perf_counter()
    thread.start()
    with socket.create_connection(("127.0.0.1", port)) as client:
        while client.recv(1 << 20):
            pass
    elapsed = time.perf_counter() - start
    thread.join()
    server.close()
    return elapsed


def _wait_final(api: Api, job_id: str) -> dict:
    while True:
        job = api.job(job_id)
        if job["status"] in FINAL:
            return job
        time.sleep(0.1)


def _download_log(api: Api, job_id: str, sink) -> int:
    """The raw log bytes, in the API's byte-offset pages (format=raw keeps bytes exact)."""
    offset = 0
    while True:
        response = api.session.get(
            f"{api.base}/jobs/{job_id}/logs",
            params={"offset": offset, "limit": 1 << 30, "format": "raw"},
            timeout=120,
            stream=True,
        )
        response.raise_for_status()
        # Large reads: requests' own .content reads 10 KiB at a time and would measure
        # the client, not the server.
        got = 0
        while block := response.raw.read(1 << 20):
            sink.write(block)
            got += len(block)
        offset = int(response.headers["X-Flashpods-Next-Offset"])
        if response.headers["X-Flashpods-Final"] == "true" and not got:
            return offset


def log_and_artifacts(size_mib: int, rounds: int = 3) -> list[Result]:
    size = size_mib * MIB
    overrides = {"limits": {"log_bytes": 2 * size, "artifact_bytes": 4 * size}}
    with bench_host(api_overrides=overrides) as host:
        api = Api(host)
        # A line-oriented log (conmon records lines) and size_mib files of 1 MiB.
        command = (
            f"yes {'0123456789abcdef' * 4} | head -c {size}; "
            f"i=0; while [ $i -lt {size_mib} ]; do "
            f"head -c {MIB} /dev/urandom > /artifacts/blob$i; i=$((i+1)); done"
        )
        job = api.post_job(command)
        _wait_final(api, job["id"])
        with tempfile.TemporaryDirectory() as tmp:
            log_copy = Path(tmp) / "log"
            tar_copy = Path(tmp) / "artifacts.tar"

            def download_log() -> None:
                with open(log_copy, "wb") as sink:
                    _download_log(api, job["id"], sink)

            def download_tar() -> None:
                url = f"{api.base}/jobs/{job['id']}/artifacts.tar"
                with (
                    api.session.get(url, stream=True, timeout=300) as response,
                    open(tar_copy, "wb") as sink,
                ):
                    response.raise_for_status()
                    while block := response.raw.read(1 << 20):
                        sink.write(block)

            # Each side is timed `rounds` times, interleaved, and the medians compared:
            # one loopback copy on this shared machine swings by a factor of four.
            log_s, tar_s, mcp_s, bare_log_s, bare_tar_s = [], [], [], [], []
            for i in range(rounds):
                log_s.append(timed(download_log)[0])
                bare_log_s.append(bare_loopback_copy(log_copy))
                tar_s.append(timed(download_tar)[0])
                bare_tar_s.append(bare_loopback_copy(tar_copy))
                mcp_s.append(_mcp_download(host, job["id"], Path(tmp) / f"dest{i}"))
            got = os.path.getsize(log_copy)
            tar_bytes = os.path.getsize(tar_copy)
            log_s, tar_s, mcp_s = median(log_s), median(tar_s), median(mcp_s)
            bare_log_s, bare_tar_s = median(bare_log_s), median(bare_tar_s)
    results = []
    for rid, what, seconds, bare_s, nbytes in (
        ("P5a", f"{size_mib} MiB log via GET /jobs/<id>/logs", log_s, bare_log_s, got),
        ("P5b", f"{size_mib} MiB artifacts via GET artifacts.tar", tar_s, bare_tar_s, tar_bytes),
        (
            "P5c",
            f"{size_mib} MiB artifacts via the MCP client (download + safe unpack)",
            mcp_s,
            bare_tar_s,
            tar_bytes,
        ),
    ):
        ours = nbytes / seconds / MIB
        bare = nbytes / bare_s / MIB
        results.append(
            Result(
                id=rid,
                what=what,
                flashpods=f"{ours:.0f} MiB/s",
                bare=f"{bare:.0f} MiB/s (loopback socket copy)",
                ratio=ours / bare,
                target=">= 0.8 of bare throughput",
                met=ours / bare >= 0.8,
            )
        )
    return results


def _mcp_download(host, job_id: str, dest: Path) -> float:
    """The laptop's own path: the MCP package's stream-to-temp-file and safe unpack."""
    from flashpods_mcp.config import load_settings
    from flashpods_mcp.operations import Flashpods

    settings = load_settings(
        {
            "HOME": str(dest.parent),
            "FLASHPODS_API_URL": host.api_url,
            "FLASHPODS_API_TOKEN": host.api_token,
            "FLASHPODS_RSYNC_URL": host.rsync_url,
        }
    )
    start = time.perf_counter()
    Flashpods(settings).fetch_artifacts(job_id, dest)
    return time.perf_counter() - start


def follow_latency(lines: int) -> Result:
    """Write-to-client latency of `follow=1`, versus the container writing a line to a file."""
    with bench_host() as host:
        api = Api(host)
        # Each line carries the container's wall clock in ns; the host shares that clock.
        command = (
            f'i=0; while [ $i -lt {lines} ]; do echo "t $(date +%s%N)"; '
            f"s=$(date +%s%N); echo x > /tmp/probe; e=$(date +%s%N); "
            f'echo "w $((e - s))" >&2; sleep 0.1; i=$((i+1)); done'
        )
        # The busybox worker's `date` has no %N: the Debian agent image's has.
        job = api.post_job(command, image="localhost/flashpods-agent:latest")
        latencies: list[float] = []
        writes: list[float] = []
        with api.session.get(
            f"{api.base}/jobs/{job['id']}/logs",
            params={"follow": 1, "offset": 0},
            stream=True,
            timeout=300,
        ) as response:
            buffer = b""
            for chunk in response.iter_content(None):
                now = time.time_ns()
                buffer += chunk
                *complete, buffer = buffer.split(b"\n")
                for line in complete:
                    parts = line.split()
                    if len(parts) == 2 and parts[0] == b"t":
                        latencies.append((now - int(parts[1])) / 1e9)
                    elif len(parts) == 2 and parts[0] == b"w":
                        writes.append(int(parts[1]) / 1e9)
    ratio = median(latencies) / median(writes) if writes else None
    return Result(
        id="P5d",
        what="follow latency: a container's log line to the client via follow=1",
        flashpods=f"median {ms(median(latencies))}",
        bare=f"median {ms(median(writes))} (container writes a line to a file, incl. two `date`)",
        ratio=ratio,
        target="reported",
        met=None,
        notes=f"{len(latencies)} lines",
    )
