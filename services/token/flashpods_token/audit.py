"""Audit log: one JSON object per line per exchange (failures bounded), never a secret.

Lines are built with json.dumps(ensure_ascii=True), so no caller-chosen string can
contain a raw newline or quote and forge a line; names that fail validation are
recorded as "<invalid>" rather than echoed, and free text is length-capped.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .identity import TOKEN_NAME_RE

INVALID = "<invalid>"
_MAX_TEXT = 200


def safe_name(name: object) -> str:
    return name if isinstance(name, str) and TOKEN_NAME_RE.match(name) else INVALID


@dataclass
class _Window:
    """One caller's failures in the current window: how many were written, and what was
    held back (by outcome) to be written as one line when the window ends."""

    start: float
    started_at: str
    written: int = 0
    held: Counter = field(default_factory=Counter)
    spiffe_id: str | None = None
    job: str | None = None
    peer: str | None = None


class AuditLog:
    """Appends audit lines to a file (or stderr when no file is configured).

    Grants are always written, one line each. Failures are what a hostile caller can
    produce at will, so they are bounded per caller (its SPIFFE ID once attested,
    else the connection's peer key): the first `failures_per_window` of a window are
    written as they happen, the rest are counted and written as one `suppressed` line
    with counts per outcome when the window ends. Nothing is silently dropped.
    """

    def __init__(
        self,
        path: str | None,
        failures_per_window: int = 20,
        window_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        max_callers: int = 10000,
    ):
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._per_window = failures_per_window
        self._window_s = window_s
        self._clock = clock
        self._max_callers = max_callers
        self._windows: dict[str, _Window] = {}
        self._path = path
        if path:
            self._fd = _open(path)
        self._closed = threading.Event()
        self._flusher: threading.Thread | None = None

    def start_flusher(self) -> None:
        """Write held-back counts when their window ends, also if the caller went quiet."""
        if self._flusher is None:
            self._flusher = threading.Thread(target=self._flush_loop, daemon=True)
            self._flusher.start()

    def _flush_loop(self) -> None:
        while not self._closed.wait(max(0.1, self._window_s / 2)):
            self.flush_expired()

    def record(
        self,
        *,
        outcome: str,
        spiffe_id: str | None = None,
        job: str | None = None,
        granted: list[str] | None = None,
        refused: list[str] | None = None,
        check: str | None = None,
        mode: str | None = None,
        peer: str | None = None,
    ) -> str | None:
        """Write (or, for a failure over its caller's budget, count) one exchange.

        Returns the line written, or None when the failure was only counted."""
        entry = {
            "time": _now(),
            "spiffe_id": spiffe_id,
            "job": job,
            "granted": [safe_name(n) for n in granted or []],
            "refused": [safe_name(n) for n in refused or []],
            "outcome": outcome,
        }
        if check:
            entry["check"] = check[:_MAX_TEXT]
        if mode:
            entry["mode"] = mode
        if spiffe_id is None and peer:
            entry["peer"] = peer[:_MAX_TEXT]
        with self._lock:
            if outcome != "granted" and not self._admit_failure(outcome, spiffe_id, job, peer):
                return None
            return self._write(entry)

    def record_entry(
        self,
        entry: dict[str, Any],
        *,
        always: bool,
        spiffe_id: str | None = None,
        job: str | None = None,
        peer: str | None = None,
    ) -> str | None:
        """Another service's line (the credential proxy's) under the same bounds: unless
        `always`, it counts against its caller's window like a failed exchange."""
        entry = {"time": _now(), **entry}
        with self._lock:
            outcome = str(entry.get("outcome", "unknown"))[:_MAX_TEXT]
            if not always and not self._admit_failure(outcome, spiffe_id, job, peer):
                return None
            return self._write(entry)

    def _admit_failure(
        self, outcome: str, spiffe_id: str | None, job: str | None, peer: str | None
    ) -> bool:
        key = spiffe_id or peer or "unknown"
        now = self._clock()
        window = self._windows.get(key)
        if window is not None and now - window.start >= self._window_s:
            self._close_window(key)
            window = None
        if window is None:
            if len(self._windows) >= self._max_callers:
                self._flush_expired_locked(now)
            if len(self._windows) >= self._max_callers:
                # Callers beyond the table (many namespaces: an escape, not a job) share one.
                key = "overflow"
                window = self._windows.get(key)
            if window is None:
                window = self._windows[key] = _Window(now, _now(), spiffe_id=spiffe_id, job=job)
                window.peer = None if spiffe_id else (peer or key)
        if window.written < self._per_window:
            window.written += 1
            return True
        window.held[outcome] += 1
        return False

    def _close_window(self, key: str) -> None:
        window = self._windows.pop(key)
        if not window.held:
            return
        entry: dict[str, Any] = {
            "time": _now(),
            "spiffe_id": window.spiffe_id,
            "job": window.job,
            "granted": [],
            "refused": [],
            "outcome": "suppressed",
            "counts": dict(sorted(window.held.items())),
            "since": window.started_at,
        }
        if window.peer:
            entry["peer"] = window.peer[:_MAX_TEXT]
        self._write(entry)

    def _flush_expired_locked(self, now: float) -> None:
        for key in [k for k, w in self._windows.items() if now - w.start >= self._window_s]:
            self._close_window(key)

    def flush_expired(self) -> None:
        with self._lock:
            self._flush_expired_locked(self._clock())

    def _write(self, entry: dict) -> str:
        line = json.dumps(entry, ensure_ascii=True, separators=(",", ":")) + "\n"
        if self._fd is None:
            sys.stderr.write(line)
            sys.stderr.flush()
        else:
            # One write() on an O_APPEND fd: lines never interleave.
            os.write(self._fd, line.encode("ascii"))
        return line

    def reopen(self) -> None:
        """Open the path again (SIGHUP): after a rotation renamed the file, new lines go
        to a new file and none is lost between the rename and the reopen."""
        if not self._path:
            return
        fd = _open(self._path)
        with self._lock:
            old, self._fd = self._fd, fd
        if old is not None:
            os.close(old)

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            # Whatever is still held back is written now: a restart loses no count.
            for key in list(self._windows):
                self._close_window(key)
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def _open(path: str) -> int:
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)


def _now() -> str:
    return datetime.fromtimestamp(time.time(), UTC).isoformat(timespec="milliseconds")
