"""Audit log: one JSON object per line for every exchange, never a secret value.

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
from datetime import UTC, datetime

from .identity import TOKEN_NAME_RE

INVALID = "<invalid>"
_MAX_TEXT = 200


def safe_name(name: object) -> str:
    return name if isinstance(name, str) and TOKEN_NAME_RE.match(name) else INVALID


class AuditLog:
    """Appends audit lines to a file (or stderr when no file is configured)."""

    def __init__(self, path: str | None):
        self._lock = threading.Lock()
        self._fd: int | None = None
        if path:
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

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
    ) -> str:
        entry = {
            "time": datetime.fromtimestamp(time.time(), UTC).isoformat(timespec="milliseconds"),
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
        line = json.dumps(entry, ensure_ascii=True, separators=(",", ":")) + "\n"
        data = line.encode("ascii")
        with self._lock:
            if self._fd is None:
                sys.stderr.write(line)
                sys.stderr.flush()
            else:
                # One write() on an O_APPEND fd: lines never interleave.
                os.write(self._fd, data)
        return line

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
