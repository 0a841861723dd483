"""The end notice: one file whose timestamp every job's end touches, so waiters wake.

A client waiting server-side for a job (`GET /jobs/<id>?wait_s=`, `logs?wait_s=`,
`logs?follow=1`) sleeps in inotify on this file and reads its job's row again each time
it changes; the store touches it after every write that makes a job final, in whichever
process made it (the reaper recording an exit, an API worker killing a queued job or
failing a start). One file for all jobs: a wake costs each waiter one SQLite read, and
nothing grows. It lives beside the database, where only the API user writes, so no job
can touch it (at worst a spurious wake re-reads a row).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def path_for(db_path: str | Path) -> Path:
    return Path(f"{db_path}.ended")


def ensure(path: Path) -> None:
    """Create the notice if missing (waiters watch it from their first request)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
    except OSError as exc:
        log.warning("cannot create the end notice %s: %s (waiters poll instead)", path, exc)
        return
    os.close(fd)


def announce(path: Path) -> None:
    """A job just became final: wake every waiter (IN_ATTRIB on the notice)."""
    try:
        os.utime(path, follow_symlinks=False)
    except FileNotFoundError:
        ensure(path)
    except OSError as exc:  # waiters still see the end at their next recheck
        log.warning("cannot touch the end notice %s: %s", path, exc)
