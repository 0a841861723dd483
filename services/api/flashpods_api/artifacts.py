"""Serving a job's artifacts without ever following a link.

A job controls what it writes into /artifacts: a symlink there may point at the DB, the
API token or another job's files, a FIFO would hang a reader. So every open is resolved
beneath the job's directory with openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS), or, where
the kernel lacks openat2, component by component with O_NOFOLLOW on directory fds; every
open is O_NONBLOCK (a FIFO never blocks) and only regular files are read. Trees are
walked by `jobtree` (iterative, depth and entry limits, two fds at most).

Paths under `_workspace/` are the job's workspace changes, kept by the reaper in a
sibling directory the job never saw (`<artifacts>/<id>.workspace/`), see docs/api.md.
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import os
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import ids, jobtree

WORKSPACE_PREFIX = "_workspace"
MAX_ENTRIES = 10000
MAX_PATH = 4096
CHUNK = 256 * 1024
# Fewer, larger writes: per-chunk Python overhead, not the copy, bounds a tar stream.
TAR_CHUNK = 1024 * 1024

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY


class NotServed(Exception):
    """The path is not a regular file beneath the job's artifacts (or does not exist)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def valid_relpath(path: str) -> bool:
    if not path or len(path) > MAX_PATH or "\0" in path or path.startswith("/"):
        return False
    return all(part not in ("", ".", "..") for part in path.split("/"))


def open_beneath(root: Path, path: str) -> int:
    """An fd for the regular file `path` beneath `root`, never through a link."""
    if not valid_relpath(path):
        raise NotServed("bad path")
    try:
        root_fd = jobtree.open_root(root)
    except OSError as exc:
        raise NotServed("no artifacts") from exc
    try:
        fd = jobtree.open_beneath(root_fd, path, _OPEN_FLAGS)
    except OSError as exc:
        raise _not_served(exc) from exc
    finally:
        os.close(root_fd)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise NotServed(_kind(st.st_mode))
    return fd


def _not_served(exc: OSError) -> NotServed:
    if exc.errno in (errno.ELOOP, errno.EXDEV, errno.ENOTDIR):
        return NotServed("symlink")
    if exc.errno == errno.ENOENT:
        return NotServed("missing")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return NotServed("unreadable")
    return NotServed(f"error: {exc.strerror}")


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISDIR(mode):
        return "directory"
    return "other"


@dataclass
class Entry:
    path: str  # as the API names it
    root: Path
    relpath: str  # beneath root
    size: int | None = None
    skipped: str | None = None
    mtime: float = 0.0
    mode: int = 0


def _walk(root: Path, prefix: str) -> Iterator[Entry]:
    """Every non-directory entry beneath `root`, without following links (jobtree.walk).

    A directory the walk did not enter (too deep, unreadable) or where it stopped (too
    many entries) is listed as skipped with the reason, never raised.
    """
    for node in jobtree.walk(root):
        api_path = f"{prefix}/{node.rel}" if prefix and node.rel else prefix or node.rel
        if node.limit or node.error:
            reason = node.limit or f"not listed: {node.error}"
            yield Entry(api_path or ".", root, node.rel, skipped=reason)
            continue
        st = node.st
        if st is None or stat.S_ISDIR(st.st_mode):
            continue
        if stat.S_ISREG(st.st_mode):
            yield Entry(api_path, root, node.rel, st.st_size, mtime=st.st_mtime, mode=st.st_mode)
        else:
            yield Entry(api_path, root, node.rel, skipped=_kind(st.st_mode))


def measure(root: Path) -> jobtree.Measure:
    """Bytes beneath `root` (links counted, never followed), and whether all were seen."""
    return jobtree.measure(root)


def workspace_root(artifacts_dir: Path, job_id: str) -> Path:
    return artifacts_dir / f"{ids.checked_job_id(job_id)}.workspace"


def entries(artifacts_dir: Path, job_id: str, glob: str | None) -> Iterator[Entry]:
    """The job's own artifacts (filtered by its artifacts_glob), then its workspace changes."""
    count = 0
    for entry in _walk(artifacts_dir / ids.checked_job_id(job_id), ""):
        if entry.path == WORKSPACE_PREFIX or entry.path.startswith(WORKSPACE_PREFIX + "/"):
            entry.skipped = "reserved name"
        elif glob and not fnmatch.fnmatchcase(entry.path, glob):
            continue
        count += 1
        if count > MAX_ENTRIES:
            yield Entry(
                "...", entry.root, "", skipped=f"listing stopped after {MAX_ENTRIES} entries"
            )
            break
        yield entry
    for entry in _walk(workspace_root(artifacts_dir, job_id), WORKSPACE_PREFIX):
        yield entry


def resolve(artifacts_dir: Path, job_id: str, path: str) -> tuple[Path, str]:
    """Map an API path to (root directory, path beneath it)."""
    if path.startswith(WORKSPACE_PREFIX + "/"):
        return workspace_root(artifacts_dir, job_id), path[len(WORKSPACE_PREFIX) + 1 :]
    if path == WORKSPACE_PREFIX:
        raise NotServed("directory")
    return artifacts_dir / ids.checked_job_id(job_id), path


def sha256_fd(fd: int) -> str:
    digest = hashlib.sha256()
    while True:
        block = os.read(fd, CHUNK)
        if not block:
            return digest.hexdigest()
        digest.update(block)


def listing(
    artifacts_dir: Path, job_id: str, glob: str | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    files: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    for entry in entries(artifacts_dir, job_id, glob):
        if entry.skipped:
            skipped.append({"path": entry.path, "reason": entry.skipped})
            continue
        try:
            fd = open_beneath(entry.root, entry.relpath)
        except NotServed as exc:
            skipped.append({"path": entry.path, "reason": exc.reason})
            continue
        try:
            size = os.fstat(fd).st_size
            files.append({"path": entry.path, "size": size, "sha256": sha256_fd(fd)})
        finally:
            os.close(fd)
    return files, skipped


def stream_fd(fd: int, size: int | None = None, chunk: int = CHUNK) -> Iterator[bytes]:
    """Yield the file in chunks and close it; with `size`, exactly that many bytes."""
    try:
        remaining = size
        while remaining is None or remaining > 0:
            want = chunk if remaining is None else min(chunk, remaining)
            block = os.read(fd, want)
            if not block:
                break
            if remaining is not None:
                remaining -= len(block)
            yield block
        if remaining:
            yield b"\0" * remaining  # the file shrank: keep the tar header's promise
    finally:
        os.close(fd)


@dataclass
class TarMember:
    entry: Entry
    header: bytes
    size: int  # exactly this many bytes follow the header (padded if the file shrank)


def tar_plan(artifacts_dir: Path, job_id: str, glob: str | None) -> tuple[list[TarMember], int]:
    """The members of artifacts.tar and the stream's exact length (for Content-Length).

    With a length the client reads large blocks instead of decoding HTTP chunks.
    """
    members = []
    total = 2 * tarfile.BLOCKSIZE
    # The walk's lstat is enough to plan: nothing is opened here (a request's fixed cost
    # is a visible share of a download, P5b). Each member is opened beneath its root
    # only when its turn comes; what is no longer a regular file then goes out as zeros.
    for entry in entries(artifacts_dir, job_id, glob):
        if entry.skipped or entry.size is None:
            continue
        info = tarfile.TarInfo(entry.path)
        info.size = entry.size
        info.mtime = int(entry.mtime)
        info.mode = entry.mode & 0o755
        header = info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape")
        members.append(TarMember(entry, header, entry.size))
        total += len(header) + entry.size + _padding(entry.size)
    return members, total


def _padding(size: int) -> int:
    return -size % tarfile.BLOCKSIZE


def stream_tar(members: list[TarMember]) -> Iterator[bytes]:
    """A ustar/pax stream of regular files only, built header by header (never in memory).

    Exactly the planned length: a member that can no longer be opened safely (replaced by
    a link since the plan) becomes zeros, one that changed size is padded or cut.
    """
    for member in members:
        yield member.header
        try:
            fd = open_beneath(member.entry.root, member.entry.relpath)
        except NotServed:
            yield from _zeros(member.size)
        else:
            yield from stream_fd(fd, member.size, TAR_CHUNK)
        if pad := _padding(member.size):
            yield b"\0" * pad
    yield b"\0" * (2 * tarfile.BLOCKSIZE)


def _zeros(size: int) -> Iterator[bytes]:
    while size > 0:
        yield b"\0" * min(size, TAR_CHUNK)
        size -= TAR_CHUNK
