"""Wait for files to change: inotify through ctypes, or an adaptive poll without it.

`follow=1` log readers and server-side waits (waiting.py) sleep here. inotify wakes them
as soon as conmon appends to the job's `.ctr.log` (or the reaper unlinks it), or a job's
end touches the end notice (endnotice.py), without a busy loop. If no
inotify instance is available (fs.inotify.max_user_instances is per user, 128 by
default), the watch polls: 10 ms right after a change, backing off to 200 ms when idle.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import select
import struct
import time

log = logging.getLogger(__name__)

IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_MOVE_SELF = 0x800
IN_DELETE_SELF = 0x400
IN_IGNORED = 0x8000  # the kernel dropped the watch (the file is gone)
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
# Appends, and unlink/rename of the file (nlink changes are IN_ATTRIB).
MASK = IN_MODIFY | IN_ATTRIB | IN_MOVE_SELF | IN_DELETE_SELF

_EVENT = struct.Struct("iIII")  # struct inotify_event without its name
POLL_MIN_S = 0.01
POLL_MAX_S = 0.2

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.inotify_init1.argtypes = [ctypes.c_int]
_libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]


class FileWatch:
    """Sleeps until a watched file changes or a timeout passes; one per follower."""

    def __init__(self) -> None:
        fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        self.fd: int | None = fd if fd >= 0 else None
        self._watched: dict[int, str] = {}  # watch descriptor -> path
        self._poll_s = POLL_MIN_S

    @property
    def uses_inotify(self) -> bool:
        return self.fd is not None

    def watch(self, path: str | os.PathLike[str]) -> bool:
        """Watch `path` too (a few files per waiter at most). False if it is missing."""
        if self.fd is None:
            return os.path.exists(path)
        key = os.fspath(path)
        if key in self._watched.values():
            return True
        wd = _libc.inotify_add_watch(self.fd, os.fsencode(key), MASK)
        if wd < 0:
            err = ctypes.get_errno()
            if err == errno.ENOENT:
                return False
            # Out of watches (fs.inotify.max_user_watches) or similar: poll instead.
            log.warning("inotify_add_watch %s: %s; polling instead", key, os.strerror(err))
            self.close()
            return os.path.exists(key)
        self._watched[wd] = key
        return True

    def changed(self) -> None:
        """Data just arrived: the poll fallback looks again soon."""
        self._poll_s = POLL_MIN_S

    def wait(self, timeout: float) -> None:
        """Return after the watched file changed, or after `timeout` seconds."""
        if self.fd is None or not self._watched:
            time.sleep(min(timeout, self._poll_s))
            self._poll_s = min(POLL_MAX_S, self._poll_s * 2)
            return
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        if poller.poll(timeout * 1000):
            self._drain()

    def _drain(self) -> None:
        assert self.fd is not None
        while True:
            try:
                events = os.read(self.fd, 64 * 1024)
            except BlockingIOError:
                return
            pos = 0
            while pos + _EVENT.size <= len(events):
                wd, mask, _cookie, name_len = _EVENT.unpack_from(events, pos)
                pos += _EVENT.size + name_len
                if mask & IN_IGNORED:
                    self._watched.pop(wd, None)  # gone: watched again when named again

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> FileWatch:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
