"""What a job changed in /workspace relative to its upload, kept with its artifacts.

Written by the reaper when the job ends, into `<artifacts>/<id>.workspace/` (a directory
the job never had mounted, so it cannot plant links there); the API serves it under
`_workspace/`:

- `files/<path>`: every added or modified regular file, as the job left it;
- `changes.json`: `{"added", "modified", "deleted", "links", "skipped", "truncated"}`;
- `changes.diff`: a unified diff of the text files that changed.

The workspace is job-controlled: it is walked on directory fds (os.fwalk) and files are
opened with O_NOFOLLOW | O_NONBLOCK, so a link or FIFO there is never followed or read.
"""

from __future__ import annotations

import difflib
import json
import os
import shutil
import stat
from pathlib import Path

MAX_DIFF_FILE = 1024 * 1024  # larger files are listed but not diffed
# What one job's change set may hold: at most this many listed paths, and every copied
# file costs at least a tar header against the byte cap, so a million empty files can
# neither pass the cap for free nor make the listing (artifacts.entries) unbounded.
MAX_CHANGES = 10_000
FILE_COST = 512
READY_MARKER = ".flashpods-ready"  # flashpods-init's "workspace copied" marker, not the job's work
_OPEN = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _tree(root: Path | None) -> dict[str, tuple[str, os.stat_result]]:
    """rel path -> (kind, lstat) for every non-directory entry beneath root."""
    out: dict[str, tuple[str, os.stat_result]] = {}
    if root is None or not root.is_dir():
        return out
    for dirpath, _dirs, files, dir_fd in os.fwalk(root, follow_symlinks=False):
        rel_dir = os.path.relpath(dirpath, root)
        for name in files:
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            if rel == READY_MARKER:
                continue
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except OSError:
                continue
            kind = (
                "file"
                if stat.S_ISREG(st.st_mode)
                else "link"
                if stat.S_ISLNK(st.st_mode)
                else "other"
            )
            out[rel] = (kind, st)
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
    dir_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        parts = rel.split("/")
        for part in parts[:-1]:
            nxt = os.open(
                part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd
            )
            os.close(dir_fd)
            dir_fd = nxt
        fd = os.open(parts[-1], _OPEN, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError("not a regular file")
    return fd


def _text(data: bytes) -> list[str] | None:
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8").splitlines(keepends=True)
    except UnicodeDecodeError:
        return None


def record(base: Path | None, workspace: Path, out_dir: Path, byte_cap: int) -> dict:
    """Compare `workspace` with `base`, write the change set to `out_dir`; return the summary."""
    if out_dir.exists():
        shutil.rmtree(out_dir)  # a previous attempt died half-way: redo it whole
    files_dir = out_dir / "files"
    files_dir.mkdir(parents=True)
    before = _tree(base)
    after = _tree(workspace)
    summary: dict = {
        "added": [],
        "modified": [],
        "deleted": [],
        "links": {},
        "skipped": [],
        "truncated": False,
    }
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
            if old and old[0] == "file":
                _diff(diff_parts, base, None, rel)
            continue
        kind, st = new
        if kind == "link":
            target = os.readlink(workspace / rel)
            if old is None or old[0] != "link" or os.readlink(base / rel) != target:  # type: ignore[operator]
                summary["links"][rel] = target
            continue
        if kind != "file":
            summary["skipped"].append(rel)
            continue
        if old is not None and old[0] == "file" and _same(base, workspace, rel, old[1], st):  # type: ignore[arg-type]
            continue
        summary["modified" if old is not None else "added"].append(rel)
        cost = st.st_size + FILE_COST
        if copied + cost > byte_cap:
            summary["truncated"] = True
            continue
        copied += cost
        dest = files_dir / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(_fd(workspace, rel), "rb") as src, open(dest, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 16)
        _diff(diff_parts, base if old is not None else None, workspace, rel)
    (out_dir / "changes.json").write_text(json.dumps(summary, indent=1, sort_keys=True))
    (out_dir / "changes.diff").write_text("".join(diff_parts))
    return {k: len(v) if isinstance(v, list | dict) else v for k, v in summary.items()}


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
