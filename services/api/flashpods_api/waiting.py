"""Server-side waits: a request that sleeps until its job ends (or its log grows).

`GET /jobs/<id>?wait_s=` answers when the job is final, `GET /jobs/<id>/logs?wait_s=`
when there are bytes past the offset or the job is final, and `follow=1` ends when the
job does; each wakes on inotify (the end notice, endnotice.py; the live log), never on a
timer. RECHECK_S is only the net under a lost notice (a host without inotify polls
10-200 ms instead, filewatch.py).

A waiting request holds a gunicorn thread, so waits are bounded twice: no wait is longer
than MAX_WAIT_S (the client asks again), and at most `budget()` requests of one worker
process wait at once. Past that a wait answers at once with the state as it is (a
follow=1 is refused with 429): N waiting clients never take the threads a spawn or a
kill needs (gunicorn runs `threads` per worker: cli.THREADS unless --threads says).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .errors import bad_request
from .filewatch import FileWatch
from .store import FINAL, Store

MAX_WAIT_S = 30.0
RECHECK_S = 5.0
THREADS_ENV = "FLASHPODS_API_THREADS"
DEFAULT_THREADS = 64
# Threads of a worker that never wait: for spawns, kills, listings, downloads.
RESERVED_THREADS = 16

_lock = threading.Lock()
_waiting = 0


def budget() -> int:
    """How many requests of this worker process may wait at once."""
    raw = os.environ.get(THREADS_ENV, "")
    threads = int(raw) if raw.isdigit() and int(raw) > 0 else DEFAULT_THREADS
    if threads > 2 * RESERVED_THREADS:
        return threads - RESERVED_THREADS
    return max(1, threads // 2)


def take() -> bool:
    """Take a waiting slot of this process; False (do not wait) when none is free."""
    global _waiting
    with _lock:
        if _waiting >= budget():
            return False
        _waiting += 1
        return True


def give_back() -> None:
    global _waiting
    with _lock:
        _waiting -= 1


class Held:
    """A slot taken for a streamed response: given back once, whichever closes it first
    (the stream's end, or the server closing a response never read)."""

    def __init__(self) -> None:
        self._once = threading.Lock()
        self._held = True

    def __call__(self) -> None:
        with self._once:
            if self._held:
                self._held = False
                give_back()


@contextlib.contextmanager
def slot() -> Iterator[bool]:
    """A waiting slot for the block; yields False (do not wait) when none is free."""
    free = take()
    try:
        yield free
    finally:
        if free:
            give_back()


def query_wait(args: Any) -> float:
    """The `wait_s` query parameter: seconds from 0 to MAX_WAIT_S (0 when absent)."""
    raw = args.get("wait_s")
    if raw is None:
        return 0.0
    try:
        seconds = float(raw) if len(raw) <= 32 else -1.0
    except ValueError:
        seconds = -1.0
    if not 0.0 <= seconds <= MAX_WAIT_S:  # NaN fails this too
        raise bad_request(
            "bad_wait_s",
            f"Query parameter 'wait_s' must be a number of seconds from 0 to {MAX_WAIT_S:g} "
            "(e.g. 10 or 2.5); ask again to wait longer.",
        )
    return seconds


def waiting_now() -> int:
    return _waiting


def until(
    ready: Callable[[], Any],
    wait_s: float,
    paths: list[Path],
) -> Any:
    """Call `ready()` until it returns something truthy or `wait_s` passes; returns the
    last result. Sleeps on inotify on `paths` (watched before each call, so a change
    right after it still wakes the wait)."""
    deadline = time.monotonic() + min(max(wait_s, 0.0), MAX_WAIT_S)
    with FileWatch() as watch:
        while True:
            for path in paths:
                watch.watch(path)
            result = ready()
            left = deadline - time.monotonic()
            if result or left <= 0:
                return result
            watch.wait(min(left, RECHECK_S))


def job_final(store: Store, job_id: str, wait_s: float) -> dict[str, Any] | None:
    """The job's row once it is final (or gone), or as it is after `wait_s`."""
    row: dict[str, Any] | None = None

    def final() -> bool:
        nonlocal row
        row = store.get_job(job_id)
        return row is None or row["status"] in FINAL

    until(final, wait_s, [store.end_notice])
    return row
