"""The end of a job, noticed when it happens: conmon closing the job's live log.

Measured on Podman 4.3 (bench/history.md, issue 18), from a job's last log line:
- conmon closes `<logs>/<id>.ctr.log` (IN_CLOSE_WRITE) 2-9 ms later, and an inspect
  through the REST API right then already says the container stopped, with its exit
  code (8-25 ms);
- Podman's event stream (`died`, file events backend) arrives 200-400 ms later: the
  cleanup process writes the event 60-140 ms after the exit and the service's reader
  tails the file by polling;
- `podman wait` (REST, even with a 5 ms interval) returned after the event;
- conmon's own exit files live in the job uid's private runtime directory, which the
  reaper's user may not read.

So the reaper watches the logs directory with inotify. A close is only a hint: the
directory is group-writable by the job uid, so an escaped process can open and close a
log as often as it likes. Every hint is checked with Podman (the container must have
stopped), and hints arriving together are handled once per job. The reaper's tick stays
the safety net: a close missed while the reaper was down, an overflowed inotify queue
(the tick is woken at once) or a host without inotify are all caught by it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import select
import struct
import threading
from collections.abc import Callable
from pathlib import Path

from . import ids

log = logging.getLogger(__name__)

IN_CLOSE_WRITE = 0x008
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
LIVE_SUFFIX = ".ctr.log"
_EVENT = struct.Struct("iIII")

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.inotify_init1.argtypes = [ctypes.c_int]
_libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]


def job_of(name: str) -> str | None:
    """The job id of a live log's file name, None for any other name (planted or ours)."""
    if not name.endswith(LIVE_SUFFIX):
        return None
    job_id = name[: -len(LIVE_SUFFIX)]
    return job_id if ids.is_job_id(job_id) else None


class ExitWatch:
    """A thread that calls `ended(job_ids)` for the logs closed since its last call and
    `overflow()` when the kernel dropped events (then nothing is known: look at all)."""

    def __init__(
        self,
        logs_dir: Path,
        ended: Callable[[set[str]], None],
        overflow: Callable[[], None],
    ) -> None:
        self.logs_dir = logs_dir
        self._ended = ended
        self._overflow = overflow
        self._stop_r = self._stop_w = -1  # a pipe while the thread runs: its stop signal
        self._fd: int | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> bool:
        """Start watching; False (and the tick alone notices ends) when inotify is refused."""
        fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            log.warning(
                "no inotify instance (%s): job ends are noticed by the tick only",
                os.strerror(ctypes.get_errno()),
            )
            return False
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        mask = IN_CLOSE_WRITE | IN_ONLYDIR
        if _libc.inotify_add_watch(fd, os.fsencode(self.logs_dir), mask) < 0:
            log.warning(
                "cannot watch %s (%s): job ends are noticed by the tick only",
                self.logs_dir,
                os.strerror(ctypes.get_errno()),
            )
            os.close(fd)
            return False
        self._fd = fd
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._thread = threading.Thread(target=self._run, name="exit-watch", daemon=True)
        self._thread.start()
        return True

    def stop(self) -> None:
        if self._thread is None:
            return
        with contextlib.suppress(OSError):
            os.write(self._stop_w, b"x")
        self._thread.join(timeout=10)
        self._thread = None
        for fd in (self._stop_r, self._stop_w):
            os.close(fd)
        self._stop_r = self._stop_w = -1

    def _run(self) -> None:
        assert self._fd is not None
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        try:
            while True:
                ready = {fd for fd, _ in poller.poll()}
                if self._stop_r in ready:
                    return
                jobs, overflowed = self._read()
                if overflowed:
                    self._call(self._overflow)
                if jobs:
                    self._call(self._ended, jobs)
        finally:
            os.close(self._fd)
            self._fd = None

    def _read(self) -> tuple[set[str], bool]:
        assert self._fd is not None
        jobs: set[str] = set()
        overflowed = False
        while True:
            try:
                data = os.read(self._fd, 64 * 1024)
            except BlockingIOError:
                return jobs, overflowed
            pos = 0
            while pos + _EVENT.size <= len(data):
                _wd, mask, _cookie, length = _EVENT.unpack_from(data, pos)
                name = data[pos + _EVENT.size : pos + _EVENT.size + length].split(b"\0", 1)[0]
                pos += _EVENT.size + length
                if mask & IN_Q_OVERFLOW:
                    overflowed = True
                elif mask & IN_IGNORED:
                    # The directory itself went away: only the tick can help now.
                    log.warning("the logs directory %s is no longer watched", self.logs_dir)
                    overflowed = True
                elif mask & IN_CLOSE_WRITE:
                    job_id = job_of(name.decode(errors="replace"))
                    if job_id:
                        jobs.add(job_id)

    @staticmethod
    def _call(fn: Callable[..., None], *args: object) -> None:
        try:
            fn(*args)
        except Exception:  # noqa: BLE001 - the watch must outlive one bad hand-off
            log.exception("handling a job's end failed (the tick retries it)")
