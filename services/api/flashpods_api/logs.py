"""Job logs: conmon's k8s-file log while a job runs, the decoded raw stream once it is final.

Conmon writes `<logs>/<id>.ctr.log` itself, so a dead API loses no byte. Each line is
`<timestamp> <stdout|stderr> <F|P> <bytes>`: F ends a line of output (a newline
follows), P is a partial line (no newline). API offsets are byte offsets into the
decoded stream, stdout and stderr interleaved as written. When the job is final the
reaper writes that stream to `<id>.log` (temp file + rename) and removes the `.ctr.log`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

CHUNK = 64 * 1024


def ctr_log_path(logs_dir: Path, job_id: str) -> Path:
    return logs_dir / f"{job_id}.ctr.log"


def final_log_path(logs_dir: Path, job_id: str) -> Path:
    return logs_dir / f"{job_id}.log"


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
        with open(path, "rb") as fh:
            for _ in decoder.feed(fh):
                pass
    except FileNotFoundError:
        pass
    return decoder


def _live_bytes(path: Path, cap: int) -> Iterator[bytes]:
    with open(path, "rb") as fh:
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
            with open(final, "rb") as fh:
                fh.seek(offset)
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
            with open(final_log_path(self.logs_dir, self.job_id), "rb") as fh:
                self.close()
                fh.seek(self.pos)
                data = fh.read(limit)
        except FileNotFoundError:
            data = self._read_live(limit)
        self.pos += len(data)
        return data

    def _read_live(self, limit: int) -> bytes:
        if self._live is None:
            try:
                self._live = open(self.live_path, "rb")  # noqa: SIM115 - kept open across reads
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
        fh = open(final_log_path(logs_dir, job_id), "rb")  # noqa: SIM115 - the response closes it
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

    Idempotent: if the final log exists already it is kept. Returns (bytes, capped).
    """
    final = final_log_path(logs_dir, job_id)
    live = ctr_log_path(logs_dir, job_id)
    if final.exists():
        capped = False
        with open(final, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            if size >= len(cap_note(cap)):
                fh.seek(size - len(cap_note(cap)))
                capped = fh.read() == cap_note(cap)
        live.unlink(missing_ok=True)
        return size, capped
    tmp = logs_dir / f".{job_id}.log.tmp"
    written = 0
    capped = False
    with open(tmp, "wb") as out:
        try:
            with open(live, "rb") as fh:
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
        out.flush()
        os.fsync(out.fileno())
    os.chmod(tmp, 0o640)
    os.replace(tmp, final)
    live.unlink(missing_ok=True)
    return written, capped
