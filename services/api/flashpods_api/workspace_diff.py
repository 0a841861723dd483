"""What a job changed in /workspace relative to its upload, kept with its artifacts.

Written by the reaper when the job ends, into `<artifacts>/<id>.workspace/`; the API
serves it under `_workspace/`:

- `files/<path>`: every added or modified regular file, as the job left it;
- `changes.json`: `{"added", "modified", "deleted", "links", "skipped", "truncated"}`,
  plus `"incomplete"` (why) when a tree was too deep or too large to walk whole;
- `changes.diff`: a unified diff of the text files that changed.

The workspace is job-controlled: it is walked by `jobtree` (iterative, depth and entry
limits, never through a link) and files are opened beneath its root with O_NOFOLLOW |
O_NONBLOCK, so a link or FIFO there is never followed or read.

The output is job-reachable too: `<artifacts>` is group-writable by the container uid
(an escaped process may plant or swap entries there). So nothing is written by path:
the record is built in a fresh directory made with mkdirat under a random name, every
file in it created with O_CREAT | O_EXCL | O_NOFOLLOW relative to that directory's fd
(mode 0750/0640: the job uid cannot write into it), and only then renamed to
`<id>.workspace` (a previous attempt's or a planted entry of that name is moved aside
and removed first, never followed).
"""

from __future__ import annotations

import contextlib
import difflib
import errno
import json
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from . import jobtree

MAX_DIFF_FILE = 1024 * 1024  # larger files are listed but not diffed
# What one job's change set may hold: at most this many listed paths, and every copied
# file costs at least a tar header against the byte cap, so a million empty files can
# neither pass the cap for free nor make the listing (artifacts.entries) unbounded.
MAX_CHANGES = 10_000
FILE_COST = 512
READY_MARKER = ".flashpods-ready"  # flashpods-init's "workspace copied" marker, not the job's work
_OPEN = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_OUT_DIR_MODE = 0o750
_OUT_FILE_MODE = 0o640
_MAX_NOTED = 5  # limit notes kept in "incomplete"


@dataclass
class _Seen:
    kind: str
    st: os.stat_result
    link: str | None = None


def _tree(root: Path | None, label: str, notes: list[str]) -> dict[str, _Seen]:
    """rel path -> what it is, for every non-directory entry beneath root."""
    out: dict[str, _Seen] = {}
    if root is None:
        return out
    for node in jobtree.walk(root, read_links=True):
        if node.limit or node.error:
            where = node.rel if len(node.rel) <= 80 else node.rel[:80] + "..."
            notes.append(f"{label} {where or '.'}: {node.limit or node.error}")
            continue
        st = node.st
        if st is None or stat.S_ISDIR(st.st_mode) or node.rel == READY_MARKER:
            continue
        kind = (
            "file" if stat.S_ISREG(st.st_mode) else "link" if stat.S_ISLNK(st.st_mode) else "other"
        )
        out[node.rel] = _Seen(kind, st, node.link)
    return out


def _read(root: Path, rel: str, limit: int) -> bytes:
    with open(_fd(root, rel), "rb") as fh:
        return fh.read(limit)


def _same(base: Path, work: Path, rel: str, a: os.stat_result, b: os.stat_result) -> bool:
    if a.st_size != b.st_size:
        return False
    try:
        with open(_fd(base, rel), "rb") as fa, open(_fd(work, rel), "rb") as fb:
            while True:
                x, y = fa.read(1 << 16), fb.read(1 << 16)
                if x != y:
                    return False
                if not x:
                    return True
    except OSError:
        return False


def _fd(root: Path, rel: str) -> int:
    """The regular file `rel` beneath `root`, never through a link (else OSError)."""
    root_fd = jobtree.open_root(root)
    try:
        fd = jobtree.open_beneath(root_fd, rel, _OPEN)
    finally:
        os.close(root_fd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", rel)
    return fd


def _text(data: bytes) -> list[str] | None:
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8").splitlines(keepends=True)
    except UnicodeDecodeError:
        return None


def record(base: Path | None, workspace: Path, out_dir: Path, byte_cap: int) -> dict[str, Any]:
    """Compare `workspace` with `base`, write the change set to `out_dir`; return the summary."""
    parent_fd = os.open(out_dir.parent, _DIR)
    try:
        _remove_leftovers(parent_fd, out_dir)
        tmp = f".{out_dir.name}.{secrets.token_hex(6)}.tmp"
        os.mkdir(tmp, _OUT_DIR_MODE, dir_fd=parent_fd)
        try:
            out_fd = _open_own_dir(parent_fd, tmp)
            try:
                summary = _write(base, workspace, out_fd, byte_cap)
            finally:
                os.close(out_fd)
            _install(parent_fd, out_dir, tmp)
        except BaseException:
            jobtree.remove(out_dir.parent / tmp)
            raise
    finally:
        os.close(parent_fd)
    return {k: len(v) if isinstance(v, list | dict) else v for k, v in summary.items()}


def _write(base: Path | None, workspace: Path, out_fd: int, byte_cap: int) -> dict[str, Any]:
    notes: list[str] = []
    before = _tree(base, "upload", notes)
    after = _tree(workspace, "workspace", notes)
    summary: dict[str, Any] = {
        "added": [],
        "modified": [],
        "deleted": [],
        "links": {},
        "skipped": [],
        "truncated": False,
    }
    if notes:
        summary["incomplete"] = "; ".join(notes[:_MAX_NOTED]) + (
            f" (and {len(notes) - _MAX_NOTED} more)" if len(notes) > _MAX_NOTED else ""
        )
    os.mkdir("files", _OUT_DIR_MODE, dir_fd=out_fd)
    copied = 0
    diff_parts: list[str] = []
    for rel in sorted(set(before) | set(after)):
        if (
            sum(len(summary[k]) for k in ("added", "modified", "deleted", "links", "skipped"))
            >= MAX_CHANGES
        ):
            summary["truncated"] = True
            break
        old, new = before.get(rel), after.get(rel)
        if new is None:
            summary["deleted"].append(rel)
            if old and old.kind == "file":
                _diff(diff_parts, base, None, rel)
            continue
        if new.kind == "link":
            if old is None or old.kind != "link" or old.link != new.link:
                summary["links"][rel] = new.link
            continue
        if new.kind != "file":
            summary["skipped"].append(rel)
            continue
        if old is not None and old.kind == "file" and _same(base, workspace, rel, old.st, new.st):  # type: ignore[arg-type]
            continue
        summary["modified" if old is not None else "added"].append(rel)
        cost = new.st.st_size + FILE_COST
        if copied + cost > byte_cap:
            summary["truncated"] = True
            continue
        try:
            src = _fd(workspace, rel)
        except OSError:
            continue  # replaced by a link or gone since the walk: listed, not copied
        with open(src, "rb") as fh:
            # At most what the walk saw: a file growing meanwhile cannot pass the cap.
            _copy_in(out_fd, "files/" + rel, fh, new.st.st_size)
        copied += cost
        _diff(diff_parts, base if old is not None else None, workspace, rel)
    _create(out_fd, "changes.json", json.dumps(summary, indent=1, sort_keys=True).encode())
    _create(out_fd, "changes.diff", "".join(diff_parts).encode())
    return summary


def _open_own_dir(dir_fd: int, name: str) -> int:
    """Our freshly made directory: refuse anything else put under its name meanwhile."""
    fd = os.open(name, _DIR, dir_fd=dir_fd)
    if os.fstat(fd).st_uid != os.geteuid():
        os.close(fd)
        raise OSError(errno.EPERM, "replaced while being written", name)
    return fd


def _create(dir_fd: int, name: str, data: bytes) -> None:
    fd = os.open(name, _CREATE, _OUT_FILE_MODE, dir_fd=dir_fd)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def _copy_in(out_fd: int, rel: str, src: BinaryIO, limit: int) -> int:
    """Create `rel` beneath `out_fd` (directories on the way too); copy up to `limit` bytes."""
    parts = rel.split("/")
    cur = os.dup(out_fd)
    try:
        for part in parts[:-1]:
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, _OUT_DIR_MODE, dir_fd=cur)
            nxt = os.open(part, _DIR, dir_fd=cur)
            os.close(cur)
            cur = nxt
        fd = os.open(parts[-1], _CREATE, _OUT_FILE_MODE, dir_fd=cur)
    finally:
        os.close(cur)
    copied = 0
    with open(fd, "wb") as dst:
        while copied < limit and (block := src.read(min(1 << 16, limit - copied))):
            dst.write(block)
            copied += len(block)
    return copied


def _install(parent_fd: int, out_dir: Path, tmp: str) -> None:
    """Rename the finished record to `out_dir`, moving whatever holds that name aside."""
    for _ in range(5):
        aside = f".{out_dir.name}.{secrets.token_hex(6)}.old"
        try:
            os.rename(out_dir.name, aside, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
        except FileNotFoundError:
            pass
        else:
            jobtree.remove(out_dir.parent / aside)
        try:
            os.rename(tmp, out_dir.name, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
            return
        except OSError as exc:  # something was put there again meanwhile
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
                raise
    raise OSError(errno.EEXIST, "the name keeps being taken", out_dir.name)


def _remove_leftovers(parent_fd: int, out_dir: Path) -> None:
    """Half-written records of an attempt that died (a crash): `.<name>.*.tmp|old`."""
    prefix = f".{out_dir.name}."
    with os.scandir(parent_fd) as it:
        stale = [e.name for e in it if e.name.startswith(prefix)]
    for name in stale:
        jobtree.remove(out_dir.parent / name)


def _diff(parts: list[str], base: Path | None, work: Path | None, rel: str) -> None:
    try:
        old = _read(base, rel, MAX_DIFF_FILE + 1) if base else b""
        new = _read(work, rel, MAX_DIFF_FILE + 1) if work else b""
    except OSError:
        return
    if len(old) > MAX_DIFF_FILE or len(new) > MAX_DIFF_FILE:
        return
    a, b = _text(old), _text(new)
    if a is None or b is None:
        return
    parts.extend(
        difflib.unified_diff(
            a, b, "a/" + rel if base else "/dev/null", "b/" + rel if work else "/dev/null"
        )
    )
    if parts and not parts[-1].endswith("\n"):
        parts.append("\n\\ No newline at end of file\n")
