"""Read a tar archive from a byte stream in one pass.

Not tarfile's stream mode ("r|"): it reads 10 KiB at a time and copies each member's
bytes several times on their way out. Here the caller's `readinto(buffer)` (a socket, a
pipe, a file; 0 at the end) fills one large buffer, reused for the whole stream, and a
member's data is handed out as memoryview slices of it, ready for os.write: the bytes
are copied once into Python and once out to the file, no more. Reusing the buffer
matters: a fresh 1 MiB object per read made the MCP client's download of 64 MiB about
20% slower (measured: bench/history.md), the copies landing in cold memory each time.

Only what an artifact archive can hold is understood: ustar headers (parsed by the
documented `tarfile.TarInfo.frombuf`, which checks the checksum and reads base-256
numbers), PAX extended headers ('x': path, linkpath, size, mtime; global 'g' headers are
ignored), GNU long names and link names ('L', 'K'), and the end of the archive. A gzip,
bzip2 or xz stream is decompressed with the stdlib on the way. Anything this reader
cannot vouch for raises FlashpodsError: a broken header, an extended header over
MAX_EXTENDED_HEADER, a GNU sparse member, a stream that ends early.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import tarfile
import zlib
from collections.abc import Callable, Iterator

from .errors import FlashpodsError

# Fills a prefix of the buffer it is given and returns how many bytes; 0 at the end.
ReadInto = Callable[[memoryview], int]

READ_BLOCK = 1024 * 1024
# Extended headers are held in memory whole: bound them (real ones are a few hundred bytes).
MAX_EXTENDED_HEADER = 1024 * 1024
BLOCK = tarfile.BLOCKSIZE
ZERO_BLOCK = bytes(BLOCK)
ENCODING, ERRORS = "utf-8", "surrogateescape"  # undecodable name bytes survive as-is
RETRY = "retry get_job_artifacts"
EXTENDED_HEADER_TYPES = (
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
)


class _Blocks:
    """The stream read block by block into one buffer, handed out as zero-copy slices
    (valid until the next take); counts bytes taken. The buffer's first `filled` bytes
    are already read."""

    def __init__(self, readinto: ReadInto, buffer: memoryview, filled: int):
        self._readinto = readinto
        self._buffer = buffer
        self._view = buffer[:filled]
        self.offset = 0

    def take(self, n: int) -> memoryview:
        """Up to n bytes (fewer at a block's end); empty only at the end of the stream."""
        if not self._view:
            self._view = self._buffer[: self._readinto(self._buffer)]
        piece, self._view = self._view[:n], self._view[n:]
        self.offset += len(piece)
        return piece

    def exactly(self, n: int) -> bytes:
        """n bytes as one bytes object, or fewer when the stream ends first."""
        pieces = []
        left = n
        while left and (piece := self.take(left)):
            pieces.append(bytes(piece))  # copied now: the next take may overwrite it
            left -= len(piece)
        return b"".join(pieces)

    def skip(self, n: int) -> int:
        """Drop n bytes; returns how many were missing when the stream ended first."""
        while n and (piece := self.take(n)):
            n -= len(piece)
        return n


class TarStream:
    """Iterate over the members (tarfile.TarInfo); `data()` gives the current one's bytes.

    Data a caller does not read is skipped before the next header.
    """

    def __init__(self, readinto: ReadInto, block_size: int = READ_BLOCK):
        buffer = memoryview(bytearray(block_size))
        readinto, filled = _decompressing(readinto, buffer)
        self._blocks = _Blocks(readinto, buffer, filled)
        self._member: tarfile.TarInfo | None = None
        self._data_left = 0  # of the current member
        self._padding = 0  # after the current member's data, up to the next block

    def __iter__(self) -> Iterator[tarfile.TarInfo]:
        while (member := self._next()) is not None:
            yield member

    def data(self) -> Iterator[memoryview]:
        """The current member's bytes, as slices of the read buffer: write each one out
        before asking for the next, which may overwrite it."""
        while self._data_left:
            piece = self._blocks.take(self._data_left)
            if not piece:
                name = self._member.name if self._member is not None else "?"
                raise self._truncated(f"inside {name!r}")
            self._data_left -= len(piece)
            yield piece

    # -- headers ------------------------------------------------------------------

    def _next(self) -> tarfile.TarInfo | None:
        self._skip_rest_of_member()
        self._member = None
        overrides: dict[str, str] = {}  # from PAX and GNU long-name headers, for the next
        while True:
            at = self._blocks.offset
            header = self._blocks.exactly(BLOCK)
            if not header and at == 0:
                raise FlashpodsError("The artifact archive is not a readable tar (it is empty).")
            if len(header) < BLOCK:
                raise self._truncated("inside a header" if header else "where a header was due")
            if header == ZERO_BLOCK:
                self._end_of_archive(at)
                return None
            member = _parse_header(header, at)
            if member.type in EXTENDED_HEADER_TYPES:
                self._read_extended_header(member, at, overrides)
                continue
            self._member = _apply(member, overrides, at)
            # As tarfile does: only regular files (and types it does not know) carry
            # data; the size field of a directory or a link means nothing.
            carries_data = member.isreg() or member.type not in tarfile.SUPPORTED_TYPES
            self._data_left = member.size if carries_data else 0
            self._padding = -self._data_left % BLOCK
            return member

    def _read_extended_header(
        self, header: tarfile.TarInfo, at: int, overrides: dict[str, str]
    ) -> None:
        self._member = header
        if header.type == tarfile.XGLTYPE:  # global defaults: nothing we use
            self._data_left, self._padding = header.size, -header.size % BLOCK
            self._skip_rest_of_member()
            return
        if header.size > MAX_EXTENDED_HEADER:
            raise FlashpodsError(
                f"The artifact archive is broken: the extended header at byte {at} is "
                f"{header.size} bytes long (at most {MAX_EXTENDED_HEADER} are accepted)."
            )
        payload = self._blocks.exactly(header.size)
        if len(payload) < header.size or self._blocks.skip(-header.size % BLOCK):
            raise self._truncated("inside an extended header")
        if header.type == tarfile.XHDTYPE:
            for key, value in parse_pax_records(payload, at).items():
                if value:
                    overrides[key] = value
                else:  # an empty value unsets the keyword
                    overrides.pop(key, None)
        else:
            key = "path" if header.type == tarfile.GNUTYPE_LONGNAME else "linkpath"
            overrides[key] = payload.split(b"\0", 1)[0].decode(ENCODING, ERRORS)

    def _skip_rest_of_member(self) -> None:
        left, self._data_left = self._data_left + self._padding, 0
        self._padding = 0
        if self._blocks.skip(left):
            name = self._member.name if self._member is not None else "?"
            raise self._truncated(f"inside {name!r}")

    def _end_of_archive(self, at: int) -> None:
        """After a zero block: another one (or the end of the stream, even in the middle of
        that second block) ends the archive."""
        second = self._blocks.exactly(BLOCK)
        if second.count(0) != len(second):
            raise FlashpodsError(
                f"The artifact archive is broken: a lone zero block at byte {at} is "
                "followed by more data."
            )
        # Read to the real end (tar pads to a record; a compressed stream ends with a
        # checksum): the reader's own end-of-stream checks run only there.
        while self._blocks.take(READ_BLOCK):
            pass

    def _truncated(self, where: str) -> FlashpodsError:
        return FlashpodsError(
            f"The artifact archive is truncated: it ends at byte {self._blocks.offset}, "
            f"{where}; {RETRY}."
        )


def _parse_header(header: bytes, at: int) -> tarfile.TarInfo:
    try:
        member = tarfile.TarInfo.frombuf(header, ENCODING, ERRORS)
    except tarfile.HeaderError as exc:
        if at == 0:
            raise FlashpodsError(f"The artifact archive is not a readable tar ({exc}).") from exc
        raise FlashpodsError(
            f"The artifact archive is broken: {exc} in the header at byte {at}."
        ) from exc
    if member.size < 0:
        raise FlashpodsError(f"The artifact archive is broken: negative size at byte {at}.")
    return member


def _apply(member: tarfile.TarInfo, overrides: dict[str, str], at: int) -> tarfile.TarInfo:
    """Apply what PAX / GNU long-name headers said about this member; refuse sparse files."""
    if member.type == tarfile.GNUTYPE_SPARSE or any(k.startswith("GNU.sparse.") for k in overrides):
        raise FlashpodsError(
            f"The artifact archive holds a GNU sparse member at byte {at}, which is not "
            "supported; the Flashpods host never sends one."
        )
    try:
        if "path" in overrides:
            member.name = overrides["path"]
        if "linkpath" in overrides:
            member.linkname = overrides["linkpath"]
        if "size" in overrides:
            if not overrides["size"].isdigit():
                raise ValueError(overrides["size"])
            member.size = int(overrides["size"])
        if "mtime" in overrides:
            member.mtime = float(overrides["mtime"])
    except ValueError as exc:
        raise FlashpodsError(
            f"The artifact archive is broken: a PAX value before byte {at} is not a number ({exc})."
        ) from None
    if member.isdir():
        member.name = member.name.rstrip("/")
    return member


def parse_pax_records(payload: bytes, at: int) -> dict[str, str]:
    """'LEN key=value\\n' records (LEN counts the whole record, newline included)."""
    records: dict[str, str] = {}
    pos = 0
    while pos < len(payload) and payload[pos] != 0:  # some writers pad with NULs
        space = payload.find(b" ", pos)
        digits = payload[pos:space] if space > 0 else b""
        end = pos + int(digits) if digits.isdigit() else -1
        key, equals, value = payload[space + 1 : end - 1].partition(b"=")
        if end <= space or end > len(payload) or payload[end - 1] != 0x0A or not equals:
            raise FlashpodsError(
                f"The artifact archive is broken: a malformed PAX record in the extended "
                f"header at byte {at}."
            )
        records[key.decode(ENCODING, ERRORS)] = value.decode(ENCODING, ERRORS)
        pos = end
    return records


# -- compressed streams ---------------------------------------------------------------

# The decompressors are never closed: they do not own the stream, and hold only memory.
_COMPRESSED = (
    (b"\x1f\x8b", lambda raw: gzip.GzipFile(fileobj=raw, mode="rb")),
    (b"BZh", lambda raw: bz2.BZ2File(raw, "rb")),
    (b"\xfd7zXZ\x00", lambda raw: lzma.LZMAFile(raw, "rb")),  # noqa: SIM115
)
_MAGIC_LEN = max(len(magic) for magic, _ in _COMPRESSED)


class _Replayed:
    """The raw stream as a file object with the bytes already looked at put back in
    front (a decompressor wants read(n))."""

    def __init__(self, head: bytes, readinto: ReadInto, block_size: int):
        self._head, self._readinto, self._block_size = head, readinto, block_size

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self._block_size
        if self._head:
            piece, self._head = self._head[:n], self._head[n:]
            return piece
        buffer = memoryview(bytearray(n))
        return buffer[: self._readinto(buffer)].tobytes()


def _decompressing(readinto: ReadInto, buffer: memoryview) -> tuple[ReadInto, int]:
    """Look at the first bytes, read into `buffer`: a plain tar is read as it is (returns
    how many bytes of it the buffer already holds); a compressed one through the
    matching stdlib decompressor (those bytes go to it, and the buffer is free again)."""
    filled = 0
    while filled < _MAGIC_LEN and (n := readinto(buffer[filled:])):
        filled += n
    for magic, open_decompressor in _COMPRESSED:
        if filled >= len(magic) and buffer[: len(magic)] == magic:
            raw = _Replayed(buffer[:filled].tobytes(), readinto, len(buffer))
            return _decompressed_readinto(open_decompressor(raw)), 0
    return readinto, filled


def _decompressed_readinto(file: io.BufferedIOBase) -> ReadInto:
    def readinto(buffer: memoryview) -> int:
        try:
            return file.readinto(buffer)
        except FlashpodsError:
            raise  # the download's own failure, already a sentence
        except EOFError as exc:
            raise FlashpodsError(
                f"The artifact archive is truncated: its compressed stream ends early; {RETRY}."
            ) from exc
        except (OSError, zlib.error, lzma.LZMAError) as exc:
            raise FlashpodsError(
                f"The artifact archive is not a readable tar: its compressed stream is "
                f"corrupt ({exc})."
            ) from exc

    return readinto
