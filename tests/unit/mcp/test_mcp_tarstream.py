"""The one-pass tar reader: what tarfile writes, read back byte for byte, whatever size
the pieces arrive in; and every archive it cannot vouch for refused with a sentence.

Archives are written here with tarfile (or by hand where tarfile will not write the
broken or unusual thing), then delivered through `readinto(buffer)` in awkward chunk sizes.
"""

import bz2
import gzip
import io
import lzma
import os
import tarfile

import pytest
from flashpods_mcp.errors import FlashpodsError
from flashpods_mcp.tarstream import MAX_EXTENDED_HEADER, TarStream

MIB = 1024 * 1024
LONG_DIR = "d" * 60 + "/" + "e" * 60  # > 100 characters with the file name: no plain ustar name
MEMBERS = {
    "short.txt": b"hello\n",
    "empty": b"",
    f"{LONG_DIR}/long-name-{'x' * 40}.bin": os.urandom(70_000),
    "naïve/日本語/ファイル.txt": b"non-ASCII names survive\n",
    "block-exact": os.urandom(2 * tarfile.BLOCKSIZE),
    **{f"many/file{i:03}": os.urandom(i * 37) for i in range(150)},
}


def build(members, fmt=tarfile.PAX_FORMAT, big=None):
    """A tar in memory: files (and their directories) in insertion order; `big`: one
    more member of that many random bytes."""
    if big:
        members = {**members, "big/member": os.urandom(big)}
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt, encoding="utf-8") as tar:
        directory = tarfile.TarInfo("many")
        directory.type = tarfile.DIRTYPE
        tar.addfile(directory)
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue(), members


def reader(data, chunk):
    """readinto(buffer) that never fills more than `chunk` bytes at a time."""
    source = io.BytesIO(data)
    return lambda buffer: source.readinto(buffer[:chunk])


def read_all(readinto, block_size=MIB):
    stream = TarStream(readinto, block_size)
    got = {}
    for member in stream:
        if member.isreg():
            got[member.name] = b"".join(bytes(piece) for piece in stream.data())
        else:
            got[member.name] = ("not a file", member.type)
    return got


def files_of(got):
    return {name: data for name, data in got.items() if isinstance(data, bytes)}


@pytest.mark.parametrize(
    "fmt",
    [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT],
    ids=["pax", "gnu", "ustar"],
)
@pytest.mark.parametrize("chunk", [1, 511, 513, 4096 + 3, MIB + 7, 1 << 30])
def test_members_are_byte_exact_in_any_chunking(fmt, chunk):
    members = dict(MEMBERS)
    if fmt == tarfile.USTAR_FORMAT:  # no long names in plain ustar beyond prefix + name
        members = {n: d for n, d in members.items() if len(n.encode()) <= 100 or "/" in n}
    # A 5 MiB member too, except one byte at a time (five million calls: too slow).
    data, members = build(members, fmt, big=5 * MIB + 3 if chunk > 1 else None)
    got = read_all(reader(data, chunk))
    assert files_of(got) == members
    assert got["many"] == ("not a file", tarfile.DIRTYPE)


def test_small_read_blocks_give_the_same_bytes():
    data, members = build(MEMBERS, big=3 * MIB)
    assert files_of(read_all(reader(data, 1 << 30), block_size=4096)) == members


def test_data_left_unread_is_skipped():
    data, members = build(MEMBERS)
    stream = TarStream(reader(data, 1000))
    names = [m.name for m in stream]  # never calls data()
    assert names == ["many", *members]


def test_member_data_is_slices_of_the_one_buffer_read_into():
    # The copy-free promise: data() hands out memoryviews of the buffer readinto filled,
    # the same buffer for the whole stream.
    data, members = build({"one": os.urandom(3 * MIB)})
    buffers = []

    def readinto(buffer):
        buffers.append(buffer.obj)
        return source.readinto(buffer)

    source = io.BytesIO(data)
    stream = TarStream(readinto)
    pieces = []
    for _member in stream:
        for piece in stream.data():
            assert piece.obj is buffers[0]
            pieces.append(bytes(piece))  # copied out now: the next read overwrites it
    assert b"".join(pieces) == members["one"]
    assert all(buffer is buffers[0] for buffer in buffers)
    assert len(pieces) <= 4  # a handful of large pieces, not 10 KiB ones


def pax_header(records: dict[str, str]) -> bytes:
    """An 'x' extended header written by hand (tarfile only writes the keys it needs)."""
    body = b""
    for key, value in records.items():
        record = f" {key}={value}\n".encode()
        length = len(record)
        while length != len(record) + len(str(length)):  # the length counts its own digits
            length = len(record) + len(str(length))
        body += str(length).encode() + record
    info = tarfile.TarInfo("././@PaxHeader")
    info.type = tarfile.XHDTYPE
    info.size = len(body)
    return info.tobuf(tarfile.USTAR_FORMAT) + padded(body)


def padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % tarfile.BLOCKSIZE)


def plain_header(name, size, **fields):
    info = tarfile.TarInfo(name)
    info.size = size
    for key, value in fields.items():
        setattr(info, key, value)
    return info.tobuf(tarfile.USTAR_FORMAT)


END = bytes(2 * tarfile.BLOCKSIZE)


def test_pax_records_override_path_size_and_mtime():
    payload = os.urandom(3000)
    archive = (
        pax_header({"path": "from/pax/" + "p" * 120, "size": "3000", "mtime": "1700000000.5"})
        + plain_header("short-name", 0)  # the header's size says 0: PAX says 3000
        + padded(payload)
        + pax_header({"comment": "ignored", "linkpath": "target/" + "t" * 120})
        + plain_header("link", 0, type=tarfile.SYMTYPE, linkname="short")
        + END
    )
    stream = TarStream(reader(archive, 777))
    members = []
    for member in stream:
        members.append((member.name, member.size, member.mtime, member.linkname))
        if member.isreg():
            assert b"".join(bytes(piece) for piece in stream.data()) == payload
    assert members == [
        ("from/pax/" + "p" * 120, 3000, 1700000000.5, ""),
        ("link", 0, 0, "target/" + "t" * 120),
    ]
    # tarfile agrees on the same bytes
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        assert [(m.name, m.size) for m in tar] == [(n, s) for n, s, _, _ in members]


def test_global_pax_headers_are_ignored():
    glob = tarfile.TarInfo("pax_global_header")
    glob.type = tarfile.XGLTYPE
    body = b"20 path=not/this/one\n"
    glob.size = len(body)
    archive = glob.tobuf() + padded(body) + plain_header("f", 2) + padded(b"ok") + END
    assert read_all(reader(archive, 100)) == {"f": b"ok"}


@pytest.mark.parametrize(
    "ending",
    [
        END,  # the standard two zero blocks
        END + bytes(20 * tarfile.BLOCKSIZE),  # padded to a 10 KiB record, as tar does
        bytes(tarfile.BLOCKSIZE),  # the stream ends right after one zero block
        bytes(tarfile.BLOCKSIZE + 100),  # ... or inside the second one
    ],
)
def test_end_of_archive(ending):
    archive = plain_header("f", 2) + padded(b"ok") + ending
    assert read_all(reader(archive, 300)) == {"f": b"ok"}


def test_the_stream_is_read_to_its_end():
    # The reader checks Content-Length only at b"": the tar reader must get there.
    archive = plain_header("f", 2) + padded(b"ok") + END + bytes(10 * tarfile.BLOCKSIZE)
    source = io.BytesIO(archive)
    read_all(source.readinto)
    assert source.tell() == len(archive)


BROKEN = [
    # (archive, words of the refusal)
    # the stream ends where the next header is due, without an end marker
    (plain_header("f", 2) + padded(b"ok"), "ends at byte 1024, where a header was due"),
    # ... inside a header
    (plain_header("f", 2) + padded(b"ok") + plain_header("g", 1)[:200], "inside a header"),
    # ... inside a member's data
    (plain_header("f", 5000) + os.urandom(3000), "ends at byte 3512, inside 'f'"),
    # ... inside the padding after the data
    (plain_header("f", 5) + b"12345", "inside 'f'"),
    # ... inside an extended header
    (pax_header({"path": "x" * 300})[:700], "inside an extended header"),
    # an empty stream is no archive
    (b"", "not a readable tar (it is empty)"),
    # garbage from the first byte
    (b"not a tar at all" * 100, "not a readable tar (invalid header)"),
    # a header whose checksum does not match, after a good member
    (
        plain_header("f", 2) + padded(b"ok") + b"X" + plain_header("g", 0)[1:] + END,
        "bad checksum in the header at byte 1024",
    ),
    # a zero block followed by more members: not an end, not a member
    (
        plain_header("f", 2) + padded(b"ok") + bytes(512) + plain_header("g", 0) + END,
        "a lone zero block at byte 1024",
    ),
    # an extended header too big to hold in memory
    (
        plain_header("././@PaxHeader", MAX_EXTENDED_HEADER + 1, type=tarfile.XHDTYPE) + END,
        "at most 1048576 are accepted",
    ),
    # a malformed PAX record
    (
        plain_header("././@PaxHeader", 12, type=tarfile.XHDTYPE)
        + padded(b"99 path=abc\n")
        + plain_header("f", 0)
        + END,
        "malformed PAX record",
    ),
    # GNU sparse members: an old-style 'S' header, and the PAX 1.0 way
    (plain_header("s", 0, type=tarfile.GNUTYPE_SPARSE) + END, "GNU sparse member"),
    (
        pax_header({"GNU.sparse.major": "1", "GNU.sparse.minor": "0"}) + plain_header("s", 0) + END,
        "GNU sparse member",
    ),
]


@pytest.mark.parametrize(("archive", "words"), BROKEN)
def test_archives_that_cannot_be_vouched_for_are_refused(archive, words):
    with pytest.raises(FlashpodsError) as info:
        read_all(reader(archive, 100))
    assert words in str(info.value)
    if "truncated" in str(info.value):
        assert str(info.value).endswith("; retry get_job_artifacts.")


@pytest.mark.parametrize(
    "compress",
    [gzip.compress, bz2.compress, lzma.compress],
    ids=["gzip", "bzip2", "xz"],
)
@pytest.mark.parametrize("chunk", [1, 4096 + 3, MIB])
def test_compressed_archives(compress, chunk):
    data, members = build(dict(list(MEMBERS.items())[:20]))
    assert files_of(read_all(reader(compress(data), chunk))) == members


def test_truncated_and_corrupt_compressed_streams():
    data, _ = build(MEMBERS)
    packed = gzip.compress(data)
    with pytest.raises(FlashpodsError, match="compressed stream ends early; retry"):
        read_all(reader(packed[: len(packed) // 2], 4096))
    corrupt = packed[:100] + bytes(b ^ 0xFF for b in packed[100:200]) + packed[200:]
    with pytest.raises(FlashpodsError, match="compressed stream is corrupt"):
        read_all(reader(corrupt, 4096))
