"""Unpack a job's artifact tar into `dest` in one pass, without ever writing outside it.

A job controls what lands in its /artifacts, and the host that serves the tar may be
compromised, so every member is distrusted. The tar is read once, as it arrives
(tarstream.py), and each member is written straight into a staging directory on dest's
filesystem: `.<dest name>.flashpods-partial-XXXXXX`, mode 0700, made in dest's parent
(the nearest existing directory above dest when dest's parent is not made yet; in dest
itself when dest is a mount point, when its parent cannot be written, or when dest is
the MCP root it must stay inside).
Only after the whole stream has been read are the files moved into dest:

- an absolute name or a `..` component anywhere in the archive refuses the whole
  archive; so do a broken or truncated stream and any other error. The staging
  directory is removed and dest is untouched (still absent if it was);
- symlinks and hardlinks are never created (skipped and reported): the simplest rule
  that cannot be tricked into a later member writing through a link;
- devices and FIFOs are skipped and reported;
- names that tools run or obey by themselves (`.git` in any spelling the laptop's file
  system may fold to it, `.gitmodules`, `.vscode/`, `.envrc`, ...: refused_names.py) are
  skipped and reported, and so is anything that would land in an existing bare git
  repository; a dest inside git metadata is refused before anything is downloaded;
- no file is made executable: a job's output is data until the user says otherwise
  (each file whose archive mode had an exec bit says so in the result);
- members deeper than UnpackLimits.max_depth are skipped and reported, and an archive of
  more than max_members members is refused whole, so a hostile tree costs bounded
  memory, descriptors and time; nothing here recurses, whatever the depth;
- staged files are moved into dest with rename(2) through directory file descriptors
  opened with O_NOFOLLOW, component by component, so a symlink that already sits in
  dest (or a race that plants one) cannot redirect them. A regular file in the way is
  replaced by the rename, never written through (a hardlink in dest to a file outside
  stays as it was); anything else in the way is left alone and reported.

A process killed mid-stream (kill -9) leaves dest untouched and the staging directory
behind, to be deleted by hand. Killed during the final renames, dest holds some of the
new files and the staging directory the rest.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from tarfile import TarInfo

from .errors import FlashpodsError
from .refused_names import refused_component, refused_path
from .tarstream import ReadInto, TarStream

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
STAGED_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
STAGING_SUFFIX = ".flashpods-partial-"
# Directory fds kept open per tree: an archive with thousands of directories must not
# run the process out of descriptors.
MAX_OPEN_DIRS = 256
# The shortest dest a job could not aim anywhere near git: a file named HEAD beside one of
# these makes a directory a git repository (git's own test, setup.c is_git_directory).
GIT_DIR_MARKERS = ("objects", "refs", "commondir")
# A staging failure these errors cause is the disk's, not one member's: give up.
FATAL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EMFILE, errno.ENFILE}


@dataclass(frozen=True)
class UnpackLimits:
    """What one archive may cost the laptop. The host serves at most 10,000 entries with
    paths of 4 KiB; a compromised host is held to these."""

    max_depth: int = 256  # path components; node_modules trees stay far below
    max_members: int = 100_000  # over this the whole archive is refused
    max_reported: int = 200  # skipped members listed one by one; the rest are counted


@dataclass(frozen=True)
class WrittenFile:
    path: str
    size: int
    exec_bit_dropped: bool = False


@dataclass(frozen=True)
class SkippedMember:
    path: str
    reason: str


@dataclass(frozen=True)
class UnpackResult:
    written: list[WrittenFile]
    skipped: list[SkippedMember]
    skipped_more: int = 0  # skipped but not listed (same cause as a listed one, or over the cap)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.written)


def member_parts(name: str) -> tuple[str, ...]:
    """Split a member name into safe components or raise why the archive is refused."""
    if name.startswith("/"):
        raise FlashpodsError(f"member {name!r} has an absolute path")
    if "\0" in name:  # only a PAX record can carry one; no file name can
        raise FlashpodsError(f"member {name!r} has a NUL byte in its name")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise FlashpodsError(f"member {name!r} climbs out with '..'")
    return parts


class RefusedPlace(Exception):
    """An existing directory in dest that nothing from a job may be written into."""


class _DirCache:
    """Directory fds under a root, opened (and created) without following any link.
    With `guard`, a directory that already exists and is a git repository is refused
    (RefusedPlace) instead of opened."""

    def __init__(self, root_fd: int, guard: bool = False):
        self.root_fd = root_fd
        self.guard = guard
        self.fds: dict[tuple[str, ...], int] = {(): root_fd}

    def open(self, parts: tuple[str, ...]) -> int:
        if parts in self.fds:
            return self.fds[parts]
        # A loop, not recursion: the depth is the archive's to choose.
        known = len(parts)
        while parts[:known] not in self.fds:
            known -= 1
        # Room for every level still to open, so one cache never holds more than
        # MAX_OPEN_DIRS (or one path's depth) descriptors, whatever the archive.
        if len(self.fds) + len(parts) - known > MAX_OPEN_DIRS:
            self._close_all_but_root()
            known = 0
        fd = self.fds[parts[:known]]
        for depth in range(known + 1, len(parts) + 1):
            fd = self._open_child(fd, parts[:depth])
        return fd

    def _open_child(self, parent: int, parts: tuple[str, ...]) -> int:
        try:
            os.mkdir(parts[-1], 0o755, dir_fd=parent)
            existed = False
        except FileExistsError:
            existed = True
        fd = os.open(parts[-1], DIR_FLAGS, dir_fd=parent)
        if existed and self.guard and is_git_dir(fd):
            os.close(fd)
            raise RefusedPlace(
                f"refused: {'/'.join(parts)} in dest is a bare git repository (HEAD and "
                "objects/ or refs/): git obeys its config and hooks"
            )
        self.fds[parts] = fd
        return fd

    def _close_all_but_root(self) -> None:
        for parts, fd in self.fds.items():
            if parts:
                os.close(fd)
        self.fds = {(): self.root_fd}

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds = {}


def is_git_dir(dir_fd: int) -> bool:
    """True when git would take this directory for a repository (HEAD beside objects/,
    refs/ or commondir), so a file written into it could be its config or a hook."""

    def has(name: str) -> bool:
        try:
            os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            return False
        return True

    return has("HEAD") and any(has(marker) for marker in GIT_DIR_MARKERS)


@dataclass(frozen=True)
class _StagedFile:
    size: int
    exec_bit_dropped: bool


@dataclass
class _Staged:
    """What the stream phase left in the staging directory, in archive order, and what it
    skipped: listed up to `limits.max_reported`, one entry per cause, the rest counted."""

    limits: UnpackLimits
    entries: dict[tuple[str, ...], _StagedFile | None] = field(default_factory=dict)
    skipped: list[SkippedMember] = field(default_factory=list)
    skipped_more: int = 0
    causes: set[tuple[str, ...]] = field(default_factory=set)

    def skip(self, shown: str, why: str, cause: tuple[str, ...] | None = None) -> None:
        """Note a skipped member; one under a `cause` (a path prefix) already listed is
        only counted, so 5,000 members under one refused .git make one line."""
        if cause is not None and cause in self.causes:
            self.skipped_more += 1
            return
        if cause is not None:
            self.causes.add(cause)
        if len(self.skipped) >= self.limits.max_reported:
            self.skipped_more += 1
            return
        if len(shown) > 300:  # a 1 MiB name would flood the agent's context
            shown = f"{shown[:150]}...{shown[-100:]}"
        self.skipped.append(SkippedMember(shown, why))


def safe_extract(tar_path: Path, dest: Path, limits: UnpackLimits | None = None) -> UnpackResult:
    """Unpack the tar file `tar_path` into `dest` (see safe_extract_stream)."""
    _check_dest(dest)  # before opening the tar: a refused dest reads nothing
    with open(tar_path, "rb", buffering=0) as source:
        return safe_extract_stream(source.readinto, dest, limits=limits)


def safe_extract_stream(
    readinto: ReadInto,
    dest: Path,
    within: Path | None = None,
    limits: UnpackLimits | None = None,
) -> UnpackResult:
    """Unpack the tar that `readinto(buffer)` delivers (0 at its end) into the existing-or-new
    directory `dest` (already confined), reading the stream exactly once. With `within`
    (the MCP root dest lies in), the staging directory is made inside it too."""
    limits = limits or UnpackLimits()
    _check_dest(dest)
    made_dest = not dest.exists()
    try:
        staging = _make_staging(dest, within)
    except BaseException:
        _remove_if_made(dest, made_dest)
        raise
    try:
        staging_fd = os.open(staging, DIR_FLAGS)
        staging_dirs = _DirCache(staging_fd)
        try:
            try:
                in_dest = staging.parent == dest
                staged = _stage(readinto, staging_dirs, staging.name if in_dest else None, limits)
            except FlashpodsError as exc:
                raise FlashpodsError(f"{str(exc).rstrip('.')}; {_nothing_written(dest)}") from exc
            except OSError as exc:
                raise FlashpodsError(
                    f"Could not stage the artifacts in {staging.parent} ({exc.strerror}); "
                    f"{_nothing_written(dest)}"
                ) from exc
            written = _move_into_dest(staged, staging_dirs, dest)
        finally:
            staging_dirs.close()
    except BaseException:
        remove_tree(staging)
        _remove_if_made(dest, made_dest)
        raise
    remove_tree(staging)
    return UnpackResult(written=written, skipped=staged.skipped, skipped_more=staged.skipped_more)


def remove_tree(path: Path) -> None:
    """Delete the staging tree, best effort, without recursion and through directory fds
    (its depth is bounded by UnpackLimits, but long names can make its paths longer
    than PATH_MAX). Each frame: an open directory, its subdirectories still to visit."""
    try:
        top = os.open(path, DIR_FLAGS)
    except OSError:
        return
    stack = [(top, _clear_files(top), "")]
    while stack:
        fd, subdirs, name = stack[-1]
        if subdirs:
            child_name = subdirs.pop()
            try:
                child = os.open(child_name, DIR_FLAGS, dir_fd=fd)
            except OSError:
                continue
            stack.append((child, _clear_files(child), child_name))
            continue
        os.close(fd)
        stack.pop()
        with contextlib.suppress(OSError):
            if stack:
                os.rmdir(name, dir_fd=stack[-1][0])
            else:
                os.rmdir(path)


def _clear_files(dir_fd: int) -> list[str]:
    """Unlink every non-directory in the directory; return its subdirectories."""
    subdirs = []
    with contextlib.suppress(OSError), os.scandir(dir_fd) as scan:
        for entry in scan:
            if entry.is_dir(follow_symlinks=False):
                subdirs.append(entry.name)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(entry.name, dir_fd=dir_fd)
    return subdirs


def _remove_if_made(dest: Path, made: bool) -> None:
    """dest was absent before a failed unpack: it is again (if it is empty)."""
    if made:
        with contextlib.suppress(OSError):
            dest.rmdir()


def _nothing_written(dest: Path) -> str:
    return f"nothing was written to {dest}."


def _check_dest(dest: Path) -> None:
    """Refuse before downloading when dest (or the first of its ancestors that exists)
    is not a directory, or when dest lies in git metadata or a git repository's own
    directory (where any file could be a hook or its config)."""
    for component in dest.parts[1:]:
        why = refused_component(component, last=False, is_dir=True)
        if why is not None:
            raise FlashpodsError(
                f"Cannot unpack into {dest}: {component} is {why}, which Flashpods never "
                "writes from a job; give a dest outside it."
            )
    for path in (dest, *dest.parents):
        with contextlib.suppress(OSError):
            fd = os.open(path, DIR_FLAGS)
            try:
                in_repository = is_git_dir(fd)
            finally:
                os.close(fd)
            if in_repository:
                raise FlashpodsError(
                    f"Cannot unpack into {dest}: {path} is a git repository (HEAD beside "
                    "objects/ or refs/), whose config and hooks git obeys; give a dest "
                    "outside it."
                )
    for path in (dest, *dest.parents):
        if path.exists():
            if not path.is_dir():
                raise FlashpodsError(
                    f"Cannot unpack into {dest}: {path} is not a directory; give a dest "
                    "that is (or can become) a directory."
                )
            return


def _make_staging(dest: Path, within: Path | None) -> Path:
    """A fresh 0700 directory on dest's filesystem (rename cannot cross filesystems),
    named after dest so a leftover says whose it is; never outside `within`."""
    prefix = f".{dest.name[:100]}{STAGING_SUFFIX}"
    beside = next(p for p in dest.parents if p.is_dir())  # dest.parent, unless not made yet
    beside_allowed = within is None or beside == within or within in beside.parents
    if not beside_allowed:
        # dest is the root itself: its parent is not ours to write, so stage inside dest
        # (a kill -9 then leaves the hidden staging directory in dest).
        dest.mkdir(parents=True, exist_ok=True)
        places = [dest]
    elif not dest.is_dir():
        places = [beside]
    elif _is_mount_point(dest):
        places = [dest]
    else:
        places = [beside, dest]  # dest itself when its parent is not ours to write
    for place in places:
        try:
            return Path(tempfile.mkdtemp(prefix=prefix, dir=place))
        except OSError as exc:
            error = exc
    raise FlashpodsError(
        f"Cannot unpack into {dest}: cannot create a staging directory in {places[0]} "
        f"({error.strerror})."
    ) from error


def _is_mount_point(path: Path) -> bool:
    return os.path.ismount(path) or path.stat().st_dev != path.parent.stat().st_dev


# -- phase 1: the stream, into the staging directory -----------------------------------


def _stage(
    readinto: ReadInto, dirs: _DirCache, staging_in_dest: str | None, limits: UnpackLimits
) -> _Staged:
    staged = _Staged(limits)
    stream = TarStream(readinto)
    for count, member in enumerate(stream, start=1):
        if count > limits.max_members:
            raise FlashpodsError(
                f"Refused the artifact archive: it has more than {limits.max_members:,} "
                "members; have the job pack its output into fewer files (one tar file "
                "in /artifacts is one member)"
            )
        try:
            parts = member_parts(member.name)
        except FlashpodsError as exc:
            raise FlashpodsError(f"Refused the artifact archive: {exc}") from None
        shown = "/".join(parts)
        if not parts:
            continue
        if len(parts) > limits.max_depth:
            why = (
                f"not written: deeper than {limits.max_depth} levels (the laptop's limit); "
                "have the job tar such a tree into one file"
            )
            staged.skip(shown, why, cause=parts[: limits.max_depth + 1])
            continue
        refused = refused_path(parts, is_dir=member.isdir())
        if refused is not None:
            prefix, why = refused
            staged.skip(shown, why, cause=prefix)
            continue
        if member.issym() or member.islnk():
            kind = "symlink" if member.issym() else "hardlink"
            why = f"{kind} to {member.linkname!r} not unpacked (links never are)"
            staged.skip(shown, why)
        elif member.ischr() or member.isblk() or member.isfifo():
            staged.skip(shown, "device or FIFO not unpacked")
        elif not (member.isreg() or member.isdir()):
            staged.skip(shown, f"tar member of unknown type {member.type!r} not unpacked")
        elif parts[0] == staging_in_dest:  # the staging dir is in dest: never overwrite it
            staged.skip(shown, "not written: the staging dir's name")
        else:
            try:
                _stage_member(stream, member, parts, dirs, staged.entries)
            except OSError as exc:
                if exc.errno in FATAL_ERRNOS:
                    raise
                why = f"not written ({exc.strerror})"
                if exc.errno in (errno.ENOTDIR, errno.EISDIR, errno.EEXIST):
                    why += ": an earlier member of the archive is in the way"
                staged.skip(shown, why)
    return staged


def _stage_member(
    stream: TarStream,
    member: TarInfo,
    parts: tuple[str, ...],
    dirs: _DirCache,
    entries: dict[tuple[str, ...], _StagedFile | None],
) -> None:
    """Write one member into staging and note it in `entries` (a file's size, or None
    for a directory) once it is complete."""
    if member.isdir():
        dirs.open(parts)
        entries.setdefault(parts, None)
        return
    mode = 0o644  # never executable (module docstring); the result says it was
    fd = os.open(parts[-1], STAGED_FILE_FLAGS, mode, dir_fd=dirs.open(parts[:-1]))
    # A name given twice: the last member wins, and the earlier one's staged bytes are
    # gone from here on (truncated), whatever happens next.
    entries.pop(parts, None)
    try:
        size = 0
        for chunk in stream.data():
            size += len(chunk)
            while chunk:  # os.write may write less than asked
                chunk = chunk[os.write(fd, chunk) :]
        os.fchmod(fd, mode)  # the umask would otherwise cut it
        with contextlib.suppress(OverflowError):  # an absurd mtime: keep the current time
            os.utime(fd, (member.mtime, member.mtime))
    finally:
        os.close(fd)
    entries[parts] = _StagedFile(size, exec_bit_dropped=bool(member.mode & 0o111))


# -- phase 2: the staged files, into dest ---------------------------------------------


def _move_into_dest(staged: _Staged, staging_dirs: _DirCache, dest: Path) -> list[WrittenFile]:
    try:
        dest.mkdir(parents=True, exist_ok=True)
        root_fd = os.open(dest, DIR_FLAGS)
    except OSError as exc:
        raise FlashpodsError(
            f"Cannot unpack into {dest}: {exc.strerror}; give a dest that is (or can "
            f"become) a directory; {_nothing_written(dest)}"
        ) from exc
    dest_dirs = _DirCache(root_fd, guard=True)
    written: list[WrittenFile] = []
    try:
        for parts, staged_file in staged.entries.items():
            shown = "/".join(parts)
            try:
                if staged_file is None:
                    dest_dirs.open(parts)
                    continue
                in_the_way = _move_file(parts, staging_dirs, dest_dirs)
            except RefusedPlace as exc:
                staged.skip(shown, str(exc), cause=("refused place", str(exc)))
                continue
            except OSError as exc:
                in_the_way = exc.strerror
            if in_the_way:
                staged.skip(
                    shown,
                    "not written: something in dest that is not a plain directory or "
                    f"file is in the way ({in_the_way})",
                )
            elif staged_file is not None:  # a directory that failed to open is no file
                written.append(WrittenFile(shown, staged_file.size, staged_file.exec_bit_dropped))
    finally:
        dest_dirs.close()
    return written


def _move_file(parts: tuple[str, ...], staging_dirs: _DirCache, dest_dirs: _DirCache) -> str | None:
    """Rename a staged file over its place in dest; returns what was in the way instead."""
    source_dir = staging_dirs.open(parts[:-1])
    target_dir = dest_dirs.open(parts[:-1])
    name = parts[-1]
    try:
        there = os.stat(name, dir_fd=target_dir, follow_symlinks=False).st_mode
    except FileNotFoundError:
        there = None
    if there is not None and not stat.S_ISREG(there):
        return _describe(there)
    try:
        os.rename(name, name, src_dir_fd=source_dir, dst_dir_fd=target_dir)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        _copy_across_mounts(name, source_dir, target_dir)
    return None


def _copy_across_mounts(name: str, source_dir: int, target_dir: int) -> None:
    """A mount point inside dest: rename cannot reach it, so copy into a fresh file beside
    the target and rename that over it (still never writing through what is there)."""
    temporary = f".{name[:100]}.flashpods-{secrets.token_hex(4)}"
    source = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=source_dir)
    try:
        info = os.fstat(source)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        target = os.open(temporary, flags, 0o600, dir_fd=target_dir)
        try:
            try:
                offset = 0
                while offset < info.st_size:
                    sent = os.sendfile(target, source, offset, info.st_size - offset)
                    if not sent:
                        break
                    offset += sent
                os.fchmod(target, stat.S_IMODE(info.st_mode))
                os.utime(target, ns=(time.time_ns(), info.st_mtime_ns))
            finally:
                os.close(target)
            os.rename(temporary, name, src_dir_fd=target_dir, dst_dir_fd=target_dir)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary, dir_fd=target_dir)
            raise
    finally:
        os.close(source)


def _describe(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symlink"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    return "a device or socket"
