"""Walking and removing job-owned directory trees without recursion, links or fd piles.

A job decides the shape of /workspace and /artifacts: 5,000 nested directories, millions
of entries, links to anywhere, directories it made unreadable. `os.fwalk` and
`shutil.rmtree` recurse once per level (RecursionError) and hold one fd per level
(EMFILE), and whatever they raise stops the reaper's tick for every job (issue 14). So
every walk and removal of job data on the host goes through here:

- iterative: an explicit stack, never recursion;
- bounded fds: at most two open at a time, whatever the depth. Each directory is
  reopened from the tree's root with openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS) (or
  component by component with O_NOFOLLOW where the kernel lacks openat2), so a job that
  swaps a directory for a link mid-walk cannot lead the walk out of its tree;
- bounded work and memory: `walk` stops at `max_depth` levels, `max_entries` entries or
  64 MiB of path names and says so in a `Node` with `limit` set; `remove` stops after
  `budget_s` seconds and is resumed by its next call (a half-removed tree is still a
  tree);
- never raises for what it finds: unreadable or vanished entries become nodes with
  `error` set, a removal that cannot finish says why in its result.

`remove` needs no stack and no path at all: it hoists every subdirectory's
subdirectories up to the tree's top level (a rename between two directory fds) and
unlinks the rest, so a chain of any depth is removed with two fds and constant memory.
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import os
import secrets
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

MAX_DEPTH = 256
MAX_ENTRIES = 250_000
# What a walk's callers may keep of it (the workspace diff keeps every path) stays bounded.
MAX_NAMES_BYTES = 64 << 20
REMOVE_BUDGET_S = 5.0
_BATCH = 10_000  # names read per directory per pass of a removal (memory stays bounded)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK

_SYS_OPENAT2 = 437  # x86_64 and aarch64 (the generic syscall table)
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_have_openat2 = True


def openat2(dir_fd: int, path: str, flags: int) -> int:
    """openat2 beneath `dir_fd`, never through any link (OSError as os.open raises it)."""
    how = _OpenHow(flags, 0, _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS)
    fd = _libc.syscall(
        _SYS_OPENAT2, dir_fd, os.fsencode(path), ctypes.byref(how), ctypes.sizeof(how)
    )
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return int(fd)


def open_nofollow_walk(dir_fd: int, path: str, flags: int) -> int:
    """The fallback: open each component with O_NOFOLLOW relative to its parent's fd."""
    parts = path.split("/")
    current = os.dup(dir_fd)
    try:
        for part in parts[:-1]:
            nxt = os.open(part, _DIR_FLAGS, dir_fd=current)
            os.close(current)
            current = nxt
        return os.open(parts[-1], flags, dir_fd=current)
    finally:
        os.close(current)


def open_beneath(dir_fd: int, path: str, flags: int) -> int:
    """An fd for `path` beneath `dir_fd` (relative, '/'-separated), never through a link."""
    global _have_openat2
    if _have_openat2:
        try:
            return openat2(dir_fd, path, flags)
        except OSError as exc:
            if exc.errno != errno.ENOSYS:
                raise
            _have_openat2 = False
    return open_nofollow_walk(dir_fd, path, flags)


def open_root(root: Path) -> int:
    """The tree's top directory itself, refusing a link (OSError)."""
    return os.open(root, _DIR_FLAGS)


@dataclass
class Node:
    """One entry beneath the root. `rel` is '/'-separated; `st` is its lstat.

    `limit` (the walk did not enter this directory, or stopped here: why) and `error`
    (it could not be read) are set instead of raising.
    """

    rel: str
    depth: int
    st: os.stat_result | None = None
    link: str | None = None  # a symlink's target (read, never followed)
    limit: str | None = None
    error: str | None = None

    @property
    def is_dir(self) -> bool:
        return self.st is not None and stat.S_ISDIR(self.st.st_mode)


def walk(
    root: Path,
    max_depth: int = MAX_DEPTH,
    max_entries: int = MAX_ENTRIES,
    read_links: bool = False,
) -> Iterator[Node]:
    """Every entry beneath `root` in a stable order, without following links.

    Per directory: its entries in name order (directories included, as nodes), then each
    subdirectory's contents, depth first. A missing root yields nothing; a root that is
    a link or not a directory yields one node with `error`.
    """
    try:
        root_fd = open_root(root)
    except FileNotFoundError:
        return
    except OSError as exc:
        yield Node("", 0, error=_reason(exc))
        return
    try:
        seen = names_bytes = 0
        # (parent's rel, name, depth): siblings share their parent's string, so pending
        # directories cost their names, not their full paths.
        stack: list[tuple[str, str, int]] = [("", "", 0)]
        while stack:
            parent, name, depth = stack.pop()
            rel_dir = f"{parent}/{name}" if parent else name
            listed = _list(root_fd, rel_dir, read_links, max_entries - seen + 1)
            if isinstance(listed, str):
                yield Node(rel_dir, depth, error=listed)
                continue
            subdirs = []
            for child, st, link in listed:
                seen += 1
                rel = f"{rel_dir}/{child}" if rel_dir else child
                names_bytes += len(rel)
                if seen > max_entries:
                    yield Node(rel, depth + 1, limit=f"more than {max_entries} entries")
                    return
                if names_bytes > MAX_NAMES_BYTES:
                    limit = f"more than {MAX_NAMES_BYTES >> 20} MiB of path names"
                    yield Node(rel, depth + 1, limit=limit)
                    return
                node = Node(rel, depth + 1, st, link)
                if node.is_dir:
                    if depth + 1 >= max_depth:
                        node.limit = f"nested deeper than {max_depth} levels"
                    else:
                        subdirs.append(child)
                yield node
            stack.extend((rel_dir, child, depth + 1) for child in reversed(subdirs))
    finally:
        os.close(root_fd)


def _list(
    root_fd: int, rel_dir: str, read_links: bool, most: int
) -> list[tuple[str, os.stat_result, str | None]] | str:
    """(name, lstat, link target) of one directory's entries, sorted; or why not.

    At most `most` names are read (a directory of millions never sits in memory whole;
    past the walk's entry limit which ones are seen does not matter).
    """
    try:
        fd = open_beneath(root_fd, rel_dir, _DIR_FLAGS) if rel_dir else os.dup(root_fd)
    except OSError as exc:
        return _reason(exc)
    try:
        out = []
        with os.scandir(fd) as it:
            names = sorted(itertools.islice((entry.name for entry in it), max(most, 0)))
        for name in names:
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                link = (
                    os.readlink(name, dir_fd=fd)
                    if read_links and stat.S_ISLNK(st.st_mode)
                    else None
                )
            except OSError:
                continue  # gone since the listing: not there
            out.append((name, st, link))
        return out
    except OSError as exc:
        return _reason(exc)
    finally:
        os.close(fd)


def _reason(exc: OSError) -> str:
    if exc.errno in (errno.ELOOP, errno.EXDEV, errno.ENOTDIR):
        return "symlink or not a directory"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "unreadable"
    if exc.errno == errno.ENAMETOOLONG:
        return "path too long"
    return exc.strerror or str(exc)


@dataclass
class Measure:
    """What `measure` found: bytes and entries, and `limit` if it did not see everything."""

    bytes: int = 0
    entries: int = 0
    limit: str | None = None
    unreadable: bool = False


def measure(root: Path, max_depth: int = MAX_DEPTH, max_entries: int = MAX_ENTRIES) -> Measure:
    """Bytes of everything beneath `root` (links counted, never followed)."""
    out = Measure()
    for node in walk(root, max_depth, max_entries):
        if node.limit and out.limit is None:
            out.limit = node.limit
        if node.error:
            out.unreadable = True
        if node.st is not None:
            out.entries += 1
            out.bytes += node.st.st_size
    return out


@dataclass
class Removal:
    done: bool
    denied: bool = False  # an entry the caller may not remove (a job's chmod): normalize
    error: str | None = None


def remove(root: Path, budget_s: float = REMOVE_BUDGET_S) -> Removal:
    """Remove `root` and everything beneath it; a link at `root` is removed, not followed.

    Returns done=False (with the reason) when the budget ran out or an entry could not
    be removed; calling again resumes.
    """
    try:
        st = os.lstat(root)
    except FileNotFoundError:
        return Removal(True)
    except OSError as exc:
        return Removal(False, error=_reason(exc))
    if not stat.S_ISDIR(st.st_mode):
        return _unlink_path(root)
    try:
        top = open_root(root)
    except FileNotFoundError:
        return Removal(True)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # replaced by a link meanwhile
            return _unlink_path(root)
        return Removal(False, exc.errno in (errno.EACCES, errno.EPERM), _reason(exc))
    try:
        left = _empty(top, time.monotonic() + budget_s)
    finally:
        os.close(top)
    if left is not None:
        return left
    try:
        os.rmdir(root)  # never follows a link at its last component
    except FileNotFoundError:
        pass
    except OSError as exc:
        return Removal(False, exc.errno in (errno.EACCES, errno.EPERM), _reason(exc))
    return Removal(True)


def _unlink_path(root: Path) -> Removal:
    try:
        os.unlink(root)
    except FileNotFoundError:
        pass
    except OSError as exc:
        return Removal(False, exc.errno in (errno.EACCES, errno.EPERM), _reason(exc))
    return Removal(True)


def _empty(top: int, deadline: float) -> Removal | None:
    """Empty the directory `top` (None when empty): unlink files, hoist grandchildren."""
    tag = secrets.token_hex(4)
    hoisted = 0
    denied = None
    while True:
        progress = False
        with os.scandir(top) as it:
            names = list(itertools.islice((entry.name for entry in it), _BATCH))
        if not names:
            return None
        for name in names:
            if time.monotonic() > deadline:
                return Removal(False, error="time budget spent (resumed on the next call)")
            try:
                st = os.stat(name, dir_fd=top, follow_symlinks=False)
                if not stat.S_ISDIR(st.st_mode):
                    os.unlink(name, dir_fd=top)
                    progress = True
                    continue
                hoisted, moved = _hoist(top, name, tag, hoisted)
                progress = progress or moved
                try:
                    os.rmdir(name, dir_fd=top)
                    progress = True
                except OSError as exc:
                    if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                        raise
            except FileNotFoundError:
                progress = True
            except OSError as exc:
                if exc.errno in (errno.EACCES, errno.EPERM):
                    denied = Removal(False, True, f"{name}: {_reason(exc)}")
                    continue
                return Removal(False, error=f"{name}: {_reason(exc)}")
        if not progress:
            return denied or Removal(False, error="entries could not be removed")


def _hoist(top: int, name: str, tag: str, hoisted: int) -> tuple[int, bool]:
    """Unlink the files of `top/name`, move its subdirectories up into `top`."""
    moved = False
    fd = os.open(name, _DIR_FLAGS, dir_fd=top)
    try:
        with os.scandir(fd) as it:
            children = [
                (e.name, e.is_dir(follow_symlinks=False)) for e in itertools.islice(it, _BATCH)
            ]
        for child, is_dir in children:
            if not is_dir:
                os.unlink(child, dir_fd=fd)
                moved = True
                continue
            while True:
                hoisted += 1
                try:
                    os.rename(child, f".rm-{tag}-{hoisted}", src_dir_fd=fd, dst_dir_fd=top)
                    moved = True
                    break
                except OSError as exc:  # that name is taken (by the job): take the next one
                    if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR):
                        raise
    finally:
        os.close(fd)
    return hoisted, moved
