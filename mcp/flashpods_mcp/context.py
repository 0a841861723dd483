"""What a tool call needs from its MCP session: the client's roots and a progress sink.

Blocking work runs in a worker thread (anyio.to_thread); `progress_bridge` hands that
thread a plain callback that posts MCP progress notifications back on the event loop,
throttled so a fast rsync does not flood the client.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import anyio
import anyio.from_thread
from mcp.types import ClientCapabilities, RootsCapability

from .confine import roots_from_uris
from .operations import ProgressFn
from .sdk import Context

log = logging.getLogger(__name__)
ROOTS_TIMEOUT_S = 5.0
PROGRESS_INTERVAL_S = 0.25


async def client_roots(ctx: Context) -> list[Path]:
    """The client's file roots; [] when it offers none (then only the allow-list counts)."""
    session = ctx.session
    if not session.check_client_capability(ClientCapabilities(roots=RootsCapability())):
        return []
    try:
        with anyio.fail_after(ROOTS_TIMEOUT_S):
            result = await session.list_roots()
    except Exception as exc:  # a client that advertises roots but fails to list them
        log.warning("roots/list failed: %s", exc)
        return []
    return roots_from_uris([str(root.uri) for root in result.roots])


def base_dir(roots: list[Path]) -> Path:
    """Relative paths are taken from the first root, else the server's working dir."""
    return roots[0] if roots else Path.cwd()


def progress_bridge(ctx: Context) -> ProgressFn:
    """A thread-side callback(done, total, message) that sends MCP progress."""
    last = [0.0]

    def report(done: int, total: int | None, message: str) -> None:
        now = time.monotonic()
        finished = total is not None and done >= total
        if now - last[0] < PROGRESS_INTERVAL_S and not finished:
            return
        last[0] = now
        try:
            anyio.from_thread.run(ctx.report_progress, float(done), total, message)
        except Exception as exc:  # progress is best effort; the transfer goes on
            log.debug("progress notification failed: %s", exc)

    return report
