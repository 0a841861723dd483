"""P5 transfer: a 64 MiB log and a 64 MiB artifact tree through the API and the MCP client,
versus a bare loopback copy of the same bytes; and follow latency."""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

from .common import FINAL, Api, Result, bench_host, median, ms, timed

MIB = 1024 * 1024


# Both sides of every comparison receive the same way: recv/readinto a reused 1 MiB
# buffer and write it to a file in the same directory. The ratio is then the server's
# cost (HTTP, auth, the job lookup, building the stream), not a difference in clients.
BLOCK = MIB


def _receive(read_into, sink_path: Path) -> int:
    buffer = bytearray(BLOCK)
    view = memoryview(buffer)
    total = 0
    with open(sink_path, "wb", buffering=0) as sink:
        while n := read_into(buffer):
            sink.write(view[:n])
            total += n
    return total


def _loopback(send, receive) -> float:
    """Seconds for `send(conn)` on one end of a fresh loopback TCP connection and
    `receive(client)` on the other, from the first byte asked for to the last received."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            send(conn)

    thread = threading.Thread(target=serve, daemon=True)
    start = time.perf_counter()
    thread.start()
    with socket.create_connection(("127.0.0.1", port)) as client:
        receive(client)
    elapsed = time.perf_counter() - start
    thread.join()
    server.close()
    return elapsed


def bare_loopback_copy(path: Path, sink_path: Path) -> float:
    """Seconds to copy a file over a loopback TCP socket into another file
    (sendfile on one side, recv_into + write on the other: what `nc` or `socat` does)."""

    def send(conn: socket.socket) -> None:
        with open(path, "rb") as f:
            conn.sendfile(f)

    return _loopback(send, lambda client: _receive(client.recv_into, sink_path))


def bare_tree_copy(source_dir: Path, dest_dir: Path) -> float:
    """Seconds to copy a directory tree over a loopback TCP socket with GNU tar on both
    ends (`tar -c | socket | tar -x`): the bare tool for what the MCP client does, which
    also has to create every file, not only move the bytes. 1 MiB records (`-b 2048`,
    `-B` to reblock what the socket delivers), the MCP client's read size: tar's default
    10 KiB records halve its throughput and would flatter the ratio."""
    dest_dir.mkdir()
    create = ["tar", "-b", "2048", "-C", str(source_dir), "-cf", "-", "."]
    extract = ["tar", "-b", "2048", "-B", "-C", str(dest_dir), "-xf", "-"]
    return _loopback(
        lambda conn: subprocess.run(create, stdout=conn.fileno(), check=True),
        lambda client: subprocess.run(extract, stdin=client.fileno(), check=True),
    )


def _http_get(api: Api, path: str, sink_path: Path) -> dict[str, str]:
    """GET one API resource into a file with http.client and the same receive loop as the
    bare copies (what curl does), so the two sides differ only in the server."""
    url = urllib.parse.urlsplit(api.base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=300)
    try:
        conn.request("GET", path, headers={"Authorization": api.session.headers["Authorization"]})
        response = conn.getresponse()
        if response.status != 200:
            raise RuntimeError(f"GET {path}: {response.status} {response.read()[:200]!r}")
        _receive(response.readinto, sink_path)
        return dict(response.getheaders())
    finally:
        conn.close()


def _wait_final(api: Api, job_id: str) -> dict:
    while True:
        job = api.job(job_id)
        if job["status"] in FINAL:
            return job
        time.sleep(0.1)


def _download_log(api: Api, job_id: str, sink_path: Path) -> int:
    """The whole raw log of a finished job: one page (format=raw keeps bytes exact)."""
    headers = _http_get(api, f"/jobs/{job_id}/logs?offset=0&limit={1 << 30}&format=raw", sink_path)
    if headers.get("X-Flashpods-Final") != "true":
        raise RuntimeError("the log did not come in one final page")
    return int(headers["X-Flashpods-Next-Offset"])


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
            bare_copy = Path(tmp) / "bare-copy"

            def download_log() -> None:
                _download_log(api, job["id"], log_copy)

            def download_tar() -> None:
                _http_get(api, f"/jobs/{job['id']}/artifacts.tar", tar_copy)

            # Each side is timed `rounds` times, interleaved, and the medians compared:
            # one loopback copy on this shared machine swings by a factor of two.
            log_s, tar_s, mcp_s, bare_log_s, bare_tar_s, bare_tree_s = [], [], [], [], [], []
            mcp_tree, bare_tree = Path(tmp) / "mcp-tree", Path(tmp) / "bare-tree"
            # What the API serves: the job's files as they lie on the host.
            artifacts_dir = host.paths.artifacts / job["id"]
            # The bare copies send the first round's downloads, written back to disk
            # first so that every source is clean page cache, as the API's files are;
            # every receiver writes a new file (truncating a full one costs time).
            download_log()
            download_tar()
            for source in (log_copy, tar_copy):
                with open(source, "rb+") as f:
                    os.fsync(f.fileno())
            log_source, tar_source = Path(tmp) / "log-source", Path(tmp) / "tar-source"
            log_copy.rename(log_source)
            tar_copy.rename(tar_source)

            def pair(ours, ours_times, bare, bare_times, i) -> None:
                # ABBA order, to cancel what the first run leaves the second (warm
                # inodes and caches).
                for fn, times in (
                    ((ours, ours_times), (bare, bare_times))
                    if i % 2 == 0
                    else ((bare, bare_times), (ours, ours_times))
                ):
                    # What earlier runs wrote goes to disk first: a run that meets the
                    # kernel flushing another's 64 MiB took twice as long (tree copies:
                    # ~30 ms alone, ~60 ms right after the other side's; ~170 ms once a
                    # few rounds had piled up), which ABBA order cannot cancel out of a
                    # median of an odd number of rounds.
                    os.sync()
                    times.append(fn())

            def timed_log() -> float:
                log_copy.unlink(missing_ok=True)
                return timed(download_log)[0]

            def timed_tar() -> float:
                tar_copy.unlink(missing_ok=True)
                return timed(download_tar)[0]

            def bare_copy_of(source: Path):
                def copy() -> float:
                    bare_copy.unlink(missing_ok=True)
                    return bare_loopback_copy(source, bare_copy)

                return copy

            for i in range(rounds):
                pair(timed_log, log_s, bare_copy_of(log_source), bare_log_s, i)
                pair(timed_tar, tar_s, bare_copy_of(tar_source), bare_tar_s, i)
                pair(
                    lambda: _mcp_download(host, job["id"], mcp_tree),
                    mcp_s,
                    lambda: bare_tree_copy(artifacts_dir, bare_tree),
                    bare_tree_s,
                    i,
                )
                for tree in (mcp_tree, bare_tree):  # room for the next round's copies
                    shutil.rmtree(tree)
            got = os.path.getsize(log_copy)
            tar_bytes = os.path.getsize(tar_copy)
            log_s, tar_s, mcp_s = median(log_s), median(tar_s), median(mcp_s)
            bare_log_s, bare_tar_s = median(bare_log_s), median(bare_tar_s)
            bare_tree_s = median(bare_tree_s)
    results = []
    file_copy = "loopback socket copy into a file"
    tree_copy = "GNU tar -c | loopback socket | tar -x of the same tree, 1 MiB records"
    for rid, what, seconds, bare_s, bare_what, nbytes in (
        ("P5a", f"{size_mib} MiB log via GET /jobs/<id>/logs", log_s, bare_log_s, file_copy, got),
        (
            "P5b",
            f"{size_mib} MiB artifacts via GET artifacts.tar",
            tar_s,
            bare_tar_s,
            file_copy,
            tar_bytes,
        ),
        (
            "P5c",
            f"{size_mib} MiB artifact tree via the MCP client (download + safe unpack)",
            mcp_s,
            bare_tree_s,
            tree_copy,
            tar_bytes,
        ),
    ):
        ours = nbytes / seconds / MIB
        bare = nbytes / bare_s / MIB
        notes = ""
        if rid == "P5c":
            # Beside the tree copy, the stricter yardstick: the same bytes into one file.
            notes = (
                f"versus the loopback copy into one file ({tar_bytes / bare_tar_s / MIB:.0f}"
                f" MiB/s): {bare_tar_s / seconds:.2f}"
            )
        results.append(
            Result(
                id=rid,
                what=what,
                flashpods=f"{ours:.0f} MiB/s",
                bare=f"{bare:.0f} MiB/s ({bare_what})",
                ratio=ours / bare,
                target=">= 0.8 of bare throughput",
                met=ours / bare >= 0.8,
                notes=notes,
            )
        )
    return results


def _mcp_download(host, job_id: str, dest: Path) -> float:
    """The laptop's own path: the MCP package's one-pass download and staged unpack."""
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
