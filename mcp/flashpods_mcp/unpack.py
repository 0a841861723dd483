"""Unpack a job's artifact tarball into `dest` without ever writing outside it.

A job controls what lands in its /artifacts, and the host that serves the tar may be
compromised, so every member is distrusted:

- an absolute name or a `..` component makes the whole archive refused before a
  single byte is written (a well-behaved host never sends one);
- symlinks and hardlinks are never created (skipped and reported): the simplest rule
  that cannot be tricked into a later member writing through a link;
- devices and FIFOs are skipped and reported;
- regular files are written through directory file descriptors opened with
  O_NOFOLLOW, component by component, so a symlink that already sits in `dest` (or a
  race that plants one) cannot redirect a write; a file in the way that is not a
  regular file is left alone and reported.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path

from .errors import FlashpodsError

COPY_CHUNK = 1024 * 1024
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO planted in dest for writing must fail, not hang.
FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


@dataclass(frozen=True)
class WrittenFile:
    path: str
    size: int


@dataclass(frozen=True)
class SkippedMember:
    path: str
    reason: str


@dataclass(frozen=True)
class UnpackResult:
    written: list[WrittenFile]
    skipped: list[SkippedMember]

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.written)


def member_parts(name: str) -> tuple[str, ...]:
    """Split a member name into safe components or raise why the archive is refused."""
    if name.startswith("/"):
        raise FlashpodsError(f"member {name!r} has an absolute path")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise FlashpodsError(f"member {name!r} climbs out with '..'")
    return parts


class _DirCache:
    """Directory fds under dest, opened (and created) without following any link."""

    def __init__(self, root_fd: int):
        self.fds: dict[tuple[str, ...], int] = {(): root_fd}

    def open(self, parts: tuple[str, ...]) -> int:
        if parts in self.fds:
            return self.fds[parts]
        parent = self.open(parts[:-1])
        with contextlib.suppress(FileExistsError):
            os.mkdir(parts[-1], 0o755, dir_fd=parent)
        fd = os.open(parts[-1], DIR_FLAGS, dir_fd=parent)
        self.fds[parts] = fd
        return fd

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)


def _write_file(tar: tarfile.TarFile, member: tarfile.TarInfo, dirs: _DirCache, parts) -> int:
    parent = dirs.open(parts[:-1])
    mode = 0o755 if member.mode & 0o111 else 0o644
    fd = os.open(parts[-1], FILE_FLAGS, mode, dir_fd=parent)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise IsADirectoryError(errno.EISDIR, "not a regular file")
        os.ftruncate(fd, 0)
        os.fchmod(fd, mode)
        size = _copy_in_kernel(tar, member, fd)
        if size is None:
            size = 0
            source = tar.extractfile(member)
            if source is not None:
                while chunk := source.read(COPY_CHUNK):
                    _write_all(fd, chunk)
                    size += len(chunk)
        os.utime(fd, (member.mtime, member.mtime))
        return size
    finally:
        os.close(fd)


def _copy_in_kernel(tar: tarfile.TarFile, member: tarfile.TarInfo, fd: int) -> int | None:
    """Copy a member's bytes straight from an uncompressed tar file with copy_file_range
    (no pass through Python); None when the archive is compressed or the member sparse."""
    raw = tar.fileobj
    if tar.mode != "r" or member.issparse() or not isinstance(raw, io.BufferedReader):
        return None
    source_fd = raw.fileno()
    offset, left = member.offset_data, member.size
    try:
        while left:
            copied = os.copy_file_range(source_fd, fd, left, offset, None)
            if copied == 0:
                raise FlashpodsError(f"The artifact archive ends inside {member.name}.")
            offset += copied
            left -= copied
    except OSError as exc:
        if exc.errno in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP) and (
            left == member.size
        ):
            return None  # this filesystem pair cannot copy in the kernel: copy in Python
        raise
    return member.size


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def safe_extract(tar_path: Path, dest: Path) -> UnpackResult:
    """Unpack `tar_path` into the existing-or-new directory `dest` (already confined)."""
    try:
        tar = tarfile.open(tar_path, mode="r:*")  # noqa: SIM115 (closed by the with below)
    except tarfile.TarError as exc:
        raise FlashpodsError(f"The artifact archive is not a readable tar ({exc}).") from exc
    with tar:
        members = tar.getmembers()
        # First pass: refuse a hostile archive before anything is written.
        for member in members:
            try:
                member_parts(member.name)
            except FlashpodsError as exc:
                raise FlashpodsError(
                    f"Refused the artifact archive: {exc}; nothing was written to {dest}."
                ) from None

        try:
            dest.mkdir(parents=True, exist_ok=True)
            root_fd = os.open(dest, DIR_FLAGS)
        except OSError as exc:
            raise FlashpodsError(
                f"Cannot unpack into {dest}: {exc.strerror}; give a dest that is (or can "
                "become) a directory."
            ) from exc
        written: list[WrittenFile] = []
        skipped: list[SkippedMember] = []
        dirs = _DirCache(root_fd)
        try:
            for member in members:
                parts = member_parts(member.name)
                shown = "/".join(parts)
                if not parts:
                    continue
                if member.issym() or member.islnk():
                    kind = "symlink" if member.issym() else "hardlink"
                    skipped.append(
                        SkippedMember(
                            shown,
                            f"{kind} to {member.linkname!r} not unpacked (links never are)",
                        )
                    )
                    continue
                if not (member.isfile() or member.isdir()):
                    skipped.append(SkippedMember(shown, "device or FIFO not unpacked"))
                    continue
                try:
                    if member.isdir():
                        dirs.open(parts)
                    else:
                        written.append(WrittenFile(shown, _write_file(tar, member, dirs, parts)))
                except OSError as exc:
                    skipped.append(
                        SkippedMember(
                            shown,
                            f"not written: something in dest that is not a plain "
                            f"directory or file is in the way ({exc.strerror})",
                        )
                    )
        finally:
            dirs.close()
    return UnpackResult(written=written, skipped=skipped)
