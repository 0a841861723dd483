"""P3 end to end: MCP spawn_worker on an unchanged 1,000-file / 20 MB tree, versus bare
rsync of the same unchanged tree plus bare `podman run -d`."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mcp.client.stdio import stdio_client

from mcp import ClientSession, StdioServerParameters

from .common import WORKER_IMAGE, Api, Result, bare_podman_run, bench_host, median, ms


def make_tree(root: Path, files: int, total_bytes: int) -> None:
    size = total_bytes // files
    for i in range(files):
        path = root / f"d{i % 20:02d}" / f"f{i:04d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))


async def _spawns(host, tree: Path, rounds: int, home: Path) -> tuple[list[float], list[float]]:
    """(ours, bare) seconds, alternating: a round of MCP spawn_worker, then a round of bare
    rsync + `podman run -d`, each cleaned up before the next is timed."""
    token_file = home / "token"
    token_file.write_text(host.api_token)
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "FLASHPODS_API_URL": host.api_url,
        "FLASHPODS_API_TOKEN_FILE": str(token_file),
        "FLASHPODS_RSYNC_URL": host.rsync_url,
        "FLASHPODS_ALLOWED_PATHS": str(tree),
    }
    server = StdioServerParameters(
        command=str(Path(sys.executable).with_name("flashpods-mcp")), env=env
    )
    ours: list[float] = []
    bare: list[float] = []
    api = Api(host)
    dest = f"{host.rsync_url.rstrip('/')}/bench-bare/"
    subprocess.run(["rsync", "-a", f"{tree}/", dest], check=True, capture_output=True)
    async with stdio_client(server) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        for i in range(rounds + 1):  # the first round uploads everything; it is not counted
            start = time.perf_counter()
            result = await session.call_tool(
                "spawn_worker", {"command": "sleep 600", "path": str(tree)}
            )
            elapsed = time.perf_counter() - start
            if result.isError:
                raise RuntimeError(f"spawn_worker failed: {result.content}")
            api.kill_and_clean(host, result.structuredContent["job"]["id"])
            if i == 0:
                continue
            ours.append(elapsed)
            start = time.perf_counter()
            subprocess.run(["rsync", "-a", f"{tree}/", dest], check=True, capture_output=True)
            container = bare_podman_run(host, "--userns=keep-id", WORKER_IMAGE, "sleep", "600")
            bare.append(time.perf_counter() - start)
            host.podman("rm", "-f", "-t", "0", container)
    return ours, bare


def unchanged_tree(rounds: int, files: int = 1000, total_bytes: int = 20 * 1024 * 1024) -> Result:
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp, bench_host() as host:
        tree = Path(tmp) / "tree"
        make_tree(tree, files, total_bytes)
        home = Path(tmp) / "home"
        home.mkdir()
        ours, bare = asyncio.run(_spawns(host, tree, rounds, home))
        mode = host.api_config.get("attestation", "peer")
        pool = host.api_config.get("warm_pool") or {}
    ratio = median(ours) / median(bare)
    pooled = f"warm pool on ({pool})" if any(pool.values()) else "warm pool off"
    return Result(
        id="P3",
        what=f"MCP spawn_worker, unchanged {files}-file / {total_bytes >> 20} MB tree",
        flashpods=f"median {ms(median(ours))}",
        bare=f"median {ms(median(bare))} (rsync of the unchanged tree + podman run -d)",
        ratio=ratio,
        target="<= 1.1",
        met=ratio <= 1.1,
        notes=f"{rounds} alternating rounds after one full upload; attestation {mode}; {pooled}",
    )
