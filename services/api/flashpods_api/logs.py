"""Job logs: conmon's k8s-file log while a job runs, the decoded raw stream once it is final.

Conmon writes `<logs>/<id>.ctr.log` itself, so a dead API loses no byte. Each line is
`<timestamp> <stdout|stderr> <F|P> <bytes>`: F ends a line of output (a newline
follows), P is a partial line (no newline). API offsets are byte offsets into the
decoded stream, stdout and stderr interleaved as written. When the job is final the
reaper writes that stream to `<id>.log` (temp file + rename) and removes the `.ctr.log`.

`<logs>` is group-writable by the container uid (conmon runs as it), so an escaped
process may plant links, FIFOs or its own files there. Every open here is relative to a
fd of `<logs>` with O_NOFOLLOW | O_NONBLOCK and must find a regular file (a FIFO never
blocks the reaper or an API worker; a link is never followed); the final log is built
in a file created with O_CREAT | O_EXCL under a random name and renamed in; a final log
that is not the API user's own file is not ours and is replaced (docs/security.md).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from . import ids, jobtree

CHUNK = 64 * 1024
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
FINAL_MODE = 0o640


def ctr_log_path(logs_dir: Path, job_id: str) -> Path:
    return logs_dir / f"{ids.checked_job_id(job_id)}.ctr.log"


def final_log_path(logs_dir: Path, job_id: str) -> Path:
    return logs_dir / f"{ids.checked_job_id(job_id)}.log"


def open_regular(path: Path, dir_fd: int | None = None) -> BinaryIO:
    """`path` opened for reading if it is a regular file (not a link, FIFO, device).

    FileNotFoundError for anything else too: a planted entry is as good as none.
    With `dir_fd`, `path` is a name in that directory.
    """
    name = path.name if dir_fd is not None else path
    try:
        fd = os.open(name, _READ, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO, errno.EACCES):
            raise FileNotFoundError(errno.ENOENT, f"not a readable regular file: {path}") from exc
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise FileNotFoundError(errno.ENOENT, f"not a regular file: {path}")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def cap_note(cap: int) -> bytes:
    return (
        f"\n[flashpods: output truncated: the log size cap of {cap} bytes was reached]\n".encode()
    )


def decode_line(line: bytes) -> bytes:
    """One complete k8s-file line (without its newline) -> the bytes the job wrote."""
    parts = line.split(b" ", 3)
    if len(parts) < 3:
        return b""
    message = parts[3] if len(parts) == 4 else b""
    return message if parts[2] == b"P" else message + b"\n"


@dataclass
class Decoder:
    """Decodes a growing k8s-file log incrementally; holds back an unfinished last line."""

    raw_pos: int = 0
    decoded: int = 0
    _pending: bytes = b""

    def feed(self, fh: BinaryIO) -> Iterator[bytes]:
        while (block := self.step(fh)) is not None:
            yield from block

    def step(self, fh: BinaryIO, size: int = CHUNK) -> list[bytes] | None:
        """Decode the next raw block: the outputs of its complete lines, None at EOF."""
        fh.seek(self.raw_pos)
        block = fh.read(size)
        if not block:
            return None
        self.raw_pos += len(block)
        lines = (self._pending + block).split(b"\n")
        self._pending = lines.pop()
        outs = [decode_line(line) for line in lines]
        self.decoded += sum(map(len, outs))
        return outs


def decoded_size(path: Path, decoder: Decoder | None = None) -> Decoder:
    """Advance `decoder` over what conmon wrote since the last call (for the size cap)."""
    decoder = decoder or Decoder()
    try:
        with open_regular(path) as fh:
            for _ in decoder.feed(fh):
                pass
    except FileNotFoundError:
        pass
    return decoder


def _live_bytes(path: Path, cap: int) -> Iterator[bytes]:
    with open_regular(path) as fh:
        sent = 0
        for out in Decoder().feed(fh):
            if sent + len(out) >= cap:
                yield out[: cap - sent]
                return
            sent += len(out)
            yield out


def read(logs_dir: Path, job_id: str, offset: int, limit: int, cap: int) -> bytes:
    """Up to `limit` decoded bytes from `offset`, from the final log or the live one."""
    final = final_log_path(logs_dir, job_id)
    for attempt in range(2):
        try:
            with open_regular(final) as fh:
                # Clamped: lseek() past the file system's largest file fails (EINVAL).
                fh.seek(min(offset, os.fstat(fh.fileno()).st_size))
                return fh.read(limit)
        except FileNotFoundError:
            pass
        try:
            return _slice(_live_bytes(ctr_log_path(logs_dir, job_id), cap), offset, limit)
        except FileNotFoundError:
            # The reaper may have just renamed the live log to the final one: look again.
            if attempt:
                return b""
    return b""


class Follower:
    """A job's decoded stream from `offset` on, read incrementally (for follow=1).

    The live log is decoded once, not from its start on every read; once the final log
    exists (written whole, then renamed in) the rest comes from there at the same offset.
    """

    def __init__(self, logs_dir: Path, job_id: str, offset: int, cap: int) -> None:
        self.logs_dir = logs_dir
        self.job_id = job_id
        self.pos = offset
        self.cap = cap
        self._live: BinaryIO | None = None
        self._decoder = Decoder()
        self._ready = bytearray()  # decoded live bytes at self.pos.., not yet returned

    @property
    def live_path(self) -> Path:
        return ctr_log_path(self.logs_dir, self.job_id)

    def read(self, limit: int) -> bytes:
        """Up to `limit` new bytes (b"" when nothing new was written yet)."""
        try:
            with open_regular(final_log_path(self.logs_dir, self.job_id)) as fh:
                self.close()
                fh.seek(min(self.pos, os.fstat(fh.fileno()).st_size))  # as in read()
                data = fh.read(limit)
        except FileNotFoundError:
            data = self._read_live(limit)
        self.pos += len(data)
        return data

    def _read_live(self, limit: int) -> bytes:
        if self._live is None:
            try:
                self._live = open_regular(self.live_path)  # kept open across reads
            except FileNotFoundError:
                return b""
        while len(self._ready) < limit and self._decoder.decoded < self.cap:
            before = self._decoder.decoded
            outs = self._decoder.step(self._live, max(CHUNK, limit))
            if outs is None:
                break
            data = b"".join(outs)[: max(0, self.cap - before)]
            skip = max(0, self.pos + len(self._ready) - before)  # bytes before `offset`
            self._ready += data[skip:]
        out = bytes(self._ready[:limit])
        del self._ready[:limit]
        return out

    def close(self) -> None:
        self._ready.clear()
        if self._live is not None:
            self._live.close()
            self._live = None


def open_final(logs_dir: Path, job_id: str, offset: int, limit: int) -> tuple[BinaryIO, int] | None:
    """The final log opened at `offset` and how many bytes (<= limit) to send from there.

    None while the job has no final log yet (its bytes are decoded from the live log).
    """
    try:
        fh = open_regular(final_log_path(logs_dir, job_id))  # the response closes it
    except FileNotFoundError:
        return None
    size = os.fstat(fh.fileno()).st_size
    fh.seek(min(offset, size))
    return fh, max(0, min(limit, size - offset))


def _slice(chunks: Iterator[bytes], offset: int, limit: int) -> bytes:
    pos = 0
    out = bytearray()
    for chunk in chunks:
        end = pos + len(chunk)
        if end > offset:
            out += chunk[max(0, offset - pos) :]
            if len(out) >= limit:
                break
        pos = end
    return bytes(out[:limit])


def trim_utf8(data: bytes) -> bytes:
    """Drop a multi-byte UTF-8 character cut at the end, so the next read starts on it."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte < 0x80:
            return data
        if byte >= 0xC0:  # lead byte: complete only if its sequence fits
            need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return data if back >= need else data[:-back]
    return data


def finalize(logs_dir: Path, job_id: str, cap: int) -> tuple[int, bool]:
    """Write the decoded stream to `<id>.log` (temp + rename), remove the live log.

    Idempotent: a final log of ours is kept. Returns (bytes, capped).
    """
    final = final_log_path(logs_dir, job_id)
    live = ctr_log_path(logs_dir, job_id)
    dir_fd = os.open(logs_dir, _DIR)
    try:
        done = _own_final(dir_fd, final, cap)
        if done is not None:
            _unlink(dir_fd, live.name)
            return done
        jobtree.remove(final)  # not ours (planted): replaced below; a link is not followed
        _remove_temps(dir_fd, logs_dir, job_id)
        tmp = f".{job_id}.log.{secrets.token_hex(6)}.tmp"
        fd = os.open(tmp, _CREATE, FINAL_MODE, dir_fd=dir_fd)
        try:
            with os.fdopen(fd, "wb") as out:
                written, capped = _decode_into(dir_fd, live, out, cap)
                out.flush()
                os.fchmod(out.fileno(), FINAL_MODE)  # whatever the umask: group may read
                os.fsync(out.fileno())
            os.replace(tmp, final.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            _unlink(dir_fd, tmp)
            raise
        _unlink(dir_fd, live.name)
        return written, capped
    finally:
        os.close(dir_fd)


def _decode_into(dir_fd: int, live: Path, out: BinaryIO, cap: int) -> tuple[int, bool]:
    written = 0
    capped = False
    try:
        with open_regular(live, dir_fd) as fh:
            for chunk in Decoder().feed(fh):
                if written + len(chunk) > cap:
                    out.write(chunk[: cap - written])
                    written = cap
                    capped = True
                    break
                out.write(chunk)
                written += len(chunk)
    except FileNotFoundError:
        pass
    if capped:
        out.write(cap_note(cap))
        written += len(cap_note(cap))
    return written, capped


def _own_final(dir_fd: int, final: Path, cap: int) -> tuple[int, bool] | None:
    """(size, capped) of a final log we wrote before (a retry after a crash), else None."""
    note = cap_note(cap)
    try:
        with open_regular(final, dir_fd) as fh:
            if os.fstat(fh.fileno()).st_uid != os.geteuid():
                return None  # the container uid's file, not the reaper's
            size = fh.seek(0, os.SEEK_END)
            if size < len(note):
                return size, False
            fh.seek(size - len(note))
            return size, fh.read() == note
    except FileNotFoundError:
        return None


def _remove_temps(dir_fd: int, logs_dir: Path, job_id: str) -> None:
    """Temp files of an attempt that died (a crash), and anything planted under such a name."""
    prefix = f".{job_id}.log."
    with os.scandir(dir_fd) as it:
        names = [entry.name for entry in it if entry.name.startswith(prefix)]
    for name in names:
        jobtree.remove(logs_dir / name)


def _unlink(dir_fd: int, name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=dir_fd)
