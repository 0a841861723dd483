"""What a job stores on the host's disk, measured by a walk, and the host's disk reserve.

Nothing in Podman bounds what a job writes into its bind-mounted /workspace and
/artifacts, so the reaper walks them (docs/security.md, "Per-job limits"), and keeps
room for the database when the disk fills ("A full disk").
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .config import Config
from .errors import ApiError

log = logging.getLogger(__name__)

# Deeper trees are a limit of their own: the walk holds one directory fd per level.
MAX_DEPTH = 256
# The walker thread rests this long between rounds over the running jobs' trees.
DISK_CHECK_EVERY_S = 2.0
BALLAST_NAME = "disk-reserve.ballast"


@dataclass
class DiskUsage:
    bytes: int = 0
    inodes: int = 0
    too_deep: bool = False


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def disk_usage(roots: list[Path], max_bytes: int, max_inodes: int) -> DiskUsage:
    """Blocks and entries beneath `roots`, stopping once either limit is passed.

    Iterative, on directory fds opened with O_NOFOLLOW beneath their parent: a job that
    swaps a directory for a link mid-walk is never followed out of its tree, and a deep
    tree costs one fd per level up to MAX_DEPTH (then `too_deep`, itself a limit). Bytes
    are allocated blocks, so a sparse file counts what it really stores; a file with
    several links counts once.
    """
    usage = DiskUsage()
    seen: set[tuple[int, int]] = set()
    for root in roots:
        try:
            top = os.open(root, _DIR_FLAGS)
        except OSError:
            continue  # not there (yet, or any more)
        stack = [(top, os.scandir(top))]
        try:
            while stack:
                fd, listing = stack[-1]
                try:
                    entry = next(listing, None)
                except OSError:
                    entry = None  # removed while we read it: nothing more to count
                if entry is None:
                    listing.close()
                    os.close(fd)
                    stack.pop()
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                usage.inodes += 1
                if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                    if (st.st_dev, st.st_ino) in seen:
                        continue
                    seen.add((st.st_dev, st.st_ino))
                usage.bytes += st.st_blocks * 512
                if usage.bytes > max_bytes or usage.inodes > max_inodes:
                    return usage
                if stat.S_ISDIR(st.st_mode):
                    if len(stack) >= MAX_DEPTH:
                        usage.too_deep = True
                        return usage
                    try:
                        child = os.open(entry.name, _DIR_FLAGS, dir_fd=fd)
                    except OSError:
                        continue  # replaced by a link or removed since the listing
                    stack.append((child, os.scandir(child)))
        finally:
            for fd, listing in stack:
                listing.close()
                os.close(fd)
    return usage


class DiskWalker:
    """Walks the running jobs' trees in a thread of its own, one round every few seconds.

    A walk costs ~20-40 us per entry (measured here): a job at the default inode limit
    takes seconds, which inside the reaper's tick would hold up every other job's
    timeout, log cap and start. The tick only reads the latest result per job.
    """

    def __init__(self, roots_of: Callable[[str], list[Path]]) -> None:
        self._roots_of = roots_of
        self._lock = threading.Lock()
        self._wanted: dict[str, tuple[int, int]] = {}  # job id -> (max bytes, max inodes)
        self._results: dict[str, DiskUsage] = {}
        self._thread: threading.Thread | None = None

    def watch(self, job_id: str, max_bytes: int, max_inodes: int) -> DiskUsage | None:
        """Keep walking this job's trees; returns the latest complete walk, if any."""
        with self._lock:
            self._wanted[job_id] = (max_bytes, max_inodes)
        if self._thread is None:
            self._walk(job_id, max_bytes, max_inodes)  # not started: walk now, in the caller
        with self._lock:
            return self._results.get(job_id)

    def start(self) -> None:
        """Walk in a thread from now on (the reaper's service; ticks in tests walk inline)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="disk-walker", daemon=True)
            self._thread.start()

    def forget(self, job_id: str) -> None:
        with self._lock:
            self._wanted.pop(job_id, None)
            self._results.pop(job_id, None)

    def _run(self) -> None:
        while True:
            with self._lock:
                round_ = list(self._wanted.items())
            for job_id, (max_bytes, max_inodes) in round_:
                self._walk(job_id, max_bytes, max_inodes)
            time.sleep(DISK_CHECK_EVERY_S)

    def _walk(self, job_id: str, max_bytes: int, max_inodes: int) -> None:
        try:
            usage = disk_usage(self._roots_of(job_id), max_bytes, max_inodes)
        except Exception:  # noqa: BLE001 - one tree must not end the walks
            log.exception("walking the files of %s failed", job_id)
            return
        with self._lock:
            if job_id in self._wanted:
                self._results[job_id] = usage


class DiskGuard:
    """Free space on the state filesystems, and the ballast that keeps SQLite writable.

    Below `limits.disk_reserve_bytes` free, POST /jobs is refused. The ballast (half the
    reserve, allocated beside the database) is unlinked when a filesystem is nearly full
    (a quarter of the reserve left), which gives the database and the reaper room to
    record the end of the job that filled it; it is allocated again once the reserve
    and the ballast fit.
    """

    def __init__(self, config: Config) -> None:
        self.reserve = int(config.limits["disk_reserve_bytes"])
        self.ballast_bytes = self.reserve // 2
        self.critical = self.reserve // 4
        db_dir = Path(config.db_path).parent
        self.ballast = db_dir / BALLAST_NAME
        self.dirs = [db_dir, config.workspaces_dir, config.artifacts_dir, config.logs_dir]

    def free(self) -> int:
        """The least space an unprivileged writer has left on any state filesystem."""
        free = None
        for path in self.dirs:
            try:
                st = os.statvfs(path)
            except OSError:
                continue
            avail = st.f_bavail * st.f_frsize
            free = avail if free is None else min(free, avail)
        return free if free is not None else 0

    def refuse_if_low(self) -> None:
        free = self.free()
        if free < self.reserve:
            raise ApiError(
                507,
                "disk_low",
                f"The host's disk has {free} bytes free, below its reserve of {self.reserve} "
                "bytes (limits.disk_reserve_bytes); no new job is accepted until finished "
                "jobs' files expire or the operator frees space. Retry later.",
            )

    def give_back(self) -> bool:
        """Unlink the ballast; True if there was one."""
        try:
            self.ballast.unlink()
        except FileNotFoundError:
            return False
        log.warning("disk nearly full: released the %d-byte ballast", self.ballast_bytes)
        return True

    def replenish(self, free: int) -> None:
        if self.ballast.exists() or free < self.reserve + self.ballast_bytes:
            return
        tmp = self.ballast.with_name(BALLAST_NAME + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                # Real blocks, not a sparse file: the space must be ours to give back.
                os.posix_fallocate(fd, 0, self.ballast_bytes)
            finally:
                os.close(fd)
            os.rename(tmp, self.ballast)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            log.warning("could not allocate the disk ballast %s: %s", self.ballast, exc)
