"""Write staged files on a second thread while the first one reads the network.

Unpacking an artifact download costs, per block, a copy out of the socket (recv) and a
copy into the page cache (write), and per file a create. All release the GIL, so the
writes go to a thread of their own and overlap with receiving the next blocks. On the
benchmark machine (2 cores, ext4) P5c went from 0.80-0.81 to 0.83-0.89 of GNU tar's
throughput on the same tree (docs/benchmarks.md): creating the files, which stays with
the reader, is most of the rest.

The reader opens each file itself (so an open that fails is still that member's own,
reported problem) and hands the descriptor over: from then on only the writer touches
it, and closes it. A failed write is never one member's problem: it fails the whole
unpack (WriteFailed), raised in the reader at its next hand-over or at `finish`.
At most `depth` blocks wait in the queue, so memory stays bounded (the reader blocks).
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading

from .errors import FlashpodsError

DEPTH = 8  # blocks of up to 1 MiB


class WriteFailed(FlashpodsError):
    """A staged file could not be written: the unpack cannot be trusted, it stops."""


class BackgroundWriter:
    def __init__(self, depth: int = DEPTH) -> None:
        self._jobs: queue.Queue[tuple | None] = queue.Queue(depth)
        self._error: OSError | None = None
        self._thread = threading.Thread(target=self._run, name="flashpods-unpack-writer")
        self._thread.start()

    def write(self, fd: int, data: memoryview) -> None:
        """Queue `data` for `fd`. It must be a slice of an immutable block (tarstream's
        blocks are bytes objects), not of a buffer the reader fills again."""
        self._put(("write", fd, data))

    def close_file(self, fd: int, mode: int, mtime: float) -> None:
        """Queue the last steps of a file: its mode, its mtime, and closing it. Never
        refused, even after a failure: the writer owns fd and must close it."""
        self._jobs.put(("close", fd, mode, mtime))

    def drain(self) -> None:
        """Wait until everything queued so far is written (or has failed)."""
        self._jobs.join()

    def finish(self) -> None:
        """Wait until everything queued is written; raise WriteFailed if anything failed."""
        self._stop()
        self._raise_if_failed()

    def abandon(self) -> None:
        """Stop after closing every file handed over (on the way out of a failed unpack)."""
        self._stop()

    def _put(self, job: tuple) -> None:
        self._raise_if_failed()
        self._jobs.put(job)

    def _stop(self) -> None:
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise WriteFailed(
                f"Could not write the staged artifacts ({self._error.strerror or self._error})"
            ) from self._error

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            kind, fd, *rest = job
            try:
                if kind == "close":
                    _finish(fd, *rest)
                elif self._error is None:  # after a failure only the closes still run
                    _write_all(fd, *rest)
            except OSError as exc:
                if self._error is None:
                    self._error = exc
            finally:
                self._jobs.task_done()


def _write_all(fd: int, data: memoryview) -> None:
    while data:  # os.write may write less than asked
        data = data[os.write(fd, data) :]


def _finish(fd: int, mode: int, mtime: float) -> None:
    try:
        os.fchmod(fd, mode)  # the umask would otherwise cut it
        with contextlib.suppress(OverflowError):  # an absurd mtime: keep the current time
            os.utime(fd, (mtime, mtime))
    finally:
        os.close(fd)
