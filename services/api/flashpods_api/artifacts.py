"""Serving a job's artifacts without ever following a link.

A job controls what it writes into /artifacts: a symlink there may point at the DB, the
API token or another job's files, a FIFO would hang a reader. So every open is resolved
beneath the job's directory with openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS), or, where
the kernel lacks openat2, component by component with O_NOFOLLOW on directory fds; every
open is O_NONBLOCK (a FIFO never blocks) and only regular files are read.

Paths under `_workspace/` are the job's workspace changes, kept by the reaper in a
sibling directory the job never saw (`<artifacts>/<id>.workspace/`), see docs/api.md.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fnmatch
import hashlib
import os
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

WORKSPACE_PREFIX = "_workspace"
MAX_ENTRIES = 10000
MAX_PATH = 4096
CHUNK = 256 * 1024
# Fewer, larger writes: per-chunk Python overhead, not the copy, bounds a tar stream.
TAR_CHUNK = 1024 * 1024

_SYS_OPENAT2 = 437  # x86_64 and aarch64 (the generic syscall table)
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class NotServed(Exception):
    """The path is not a regular file beneath the job's artifacts (or does not exist)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def valid_relpath(path: str) -> bool:
    if not path or len(path) > MAX_PATH or "\0" in path or path.startswith("/"):
        return False
    return all(part not in ("", ".", "..") for part in path.split("/"))


def openat2(dir_fd: int, path: str) -> int:
    how = _OpenHow(_OPEN_FLAGS, 0, _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS)
    fd = _libc.syscall(
        _SYS_OPENAT2, dir_fd, os.fsencode(path), ctypes.byref(how), ctypes.sizeof(how)
    )
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return int(fd)


def open_nofollow_walk(dir_fd: int, path: str) -> int:
    """The fallback: open each component with O_NOFOLLOW relative to its parent's fd."""
    parts = path.split("/")
    current = os.dup(dir_fd)
    try:
        for part in parts[:-1]:
            nxt = os.open(
                part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=current
            )
            os.close(current)
            current = nxt
        return os.open(parts[-1], _OPEN_FLAGS, dir_fd=current)
    finally:
        os.close(current)


_use_openat2 = True


def open_beneath(root: Path, path: str) -> int:
    """An fd for the regular file `path` beneath `root`, never through a link."""
    global _use_openat2
    if not valid_relpath(path):
        raise NotServed("bad path")
    try:
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise NotServed("no artifacts") from exc
    try:
        if _use_openat2:
            try:
                fd = openat2(root_fd, path)
            except OSError as exc:
                if exc.errno != errno.ENOSYS:
                    raise _not_served(exc) from exc
                _use_openat2 = False
                fd = _fallback(root_fd, path)
        else:
            fd = _fallback(root_fd, path)
    finally:
        os.close(root_fd)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise NotServed(_kind(st.st_mode))
    return fd


def _fallback(root_fd: int, path: str) -> int:
    try:
        return open_nofollow_walk(root_fd, path)
    except OSError as exc:
        raise _not_served(exc) from exc


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
    """Every entry beneath `root` without following links (os.fwalk works on dir fds)."""
    if not root.is_dir() or root.is_symlink():
        return
    for dirpath, dirnames, filenames, dir_fd in os.fwalk(root, follow_symlinks=False):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        names = sorted(filenames) + sorted(d for d in dirnames if _is_link(d, dir_fd))
        dirnames.sort()
        for name in names:
            rel = rel_dir + name
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except OSError:
                continue
            api_path = f"{prefix}/{rel}" if prefix else rel
            if stat.S_ISREG(st.st_mode):
                yield Entry(api_path, root, rel, st.st_size, mtime=st.st_mtime, mode=st.st_mode)
            else:
                yield Entry(api_path, root, rel, skipped=_kind(st.st_mode))


def _is_link(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def tree_bytes(root: Path) -> int:
    """Bytes of everything beneath `root` (links are counted, never followed)."""
    total = 0
    for _dirpath, dirnames, filenames, dir_fd in os.fwalk(root, follow_symlinks=False):
        for name in filenames + dirnames:
            with contextlib.suppress(OSError):
                total += os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_size
    return total


def workspace_root(artifacts_dir: Path, job_id: str) -> Path:
    return artifacts_dir / f"{job_id}.workspace"


def entries(artifacts_dir: Path, job_id: str, glob: str | None) -> Iterator[Entry]:
    """The job's own artifacts (filtered by its artifacts_glob), then its workspace changes."""
    count = 0
    for entry in _walk(artifacts_dir / job_id, ""):
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
    return artifacts_dir / job_id, path


def sha256_fd(fd: int) -> str:
    digest = hashlib.sha256()
    while True:
        block = os.read(fd, CHUNK)
        if not block:
            return digest.hexdigest()
        digest.update(block)


def listing(artifacts_dir: Path, job_id: str, glob: str | None) -> tuple[list[dict], list[dict]]:
    files: list[dict] = []
    skipped: list[dict] = []
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
