"""The unpack's background writer (writer.py): bytes land in order, every descriptor it
is handed gets closed, and a failed write fails the whole unpack, leaving dest as it was."""

import io
import os
import subprocess
import tarfile

import pytest
from flashpods_mcp.errors import FlashpodsError
from flashpods_mcp.unpack import safe_extract_stream
from flashpods_mcp.writer import BackgroundWriter, WriteFailed

MIB = 1024 * 1024


def _closed(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return True
    return False


def _tar(pairs) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in pairs:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _reader(data: bytes):
    source = io.BytesIO(data)
    return lambda n: source.read(n)


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_bytes_land_in_order_with_mode_and_mtime_and_the_file_is_closed(tmp_path):
    blocks = [os.urandom(MIB + 7) for _ in range(20)]  # more than the queue holds
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o600)
    writer = BackgroundWriter(depth=2)
    for block in blocks:
        writer.write(fd, memoryview(block))
    writer.close_file(fd, 0o755, 1_700_000_000)
    writer.finish()
    assert (tmp_path / "f").read_bytes() == b"".join(blocks)
    st = (tmp_path / "f").stat()
    assert st.st_mode & 0o777 == 0o755 and st.st_mtime == 1_700_000_000
    assert _closed(fd)


def test_a_failed_write_is_raised_and_every_handed_over_fd_still_closed(tmp_path):
    (tmp_path / "ro").write_bytes(b"")
    bad = os.open(tmp_path / "ro", os.O_RDONLY)  # writing to it fails with EBADF
    good = os.open(tmp_path / "ok", os.O_WRONLY | os.O_CREAT, 0o600)
    writer = BackgroundWriter()
    writer.write(bad, memoryview(b"x"))
    writer.close_file(bad, 0o644, 0)
    writer.drain()
    with pytest.raises(WriteFailed, match="Could not write the staged artifacts"):
        writer.write(good, memoryview(b"y"))
    writer.close_file(good, 0o644, 0)  # never refused: the writer owns the fd
    with pytest.raises(WriteFailed):
        writer.finish()
    assert _closed(bad) and _closed(good)
    assert (tmp_path / "ok").read_bytes() == b""  # nothing written after the failure


def test_a_name_given_twice_after_a_large_first_member_keeps_only_the_last(tmp_path):
    # The first member's writes are still queued when the second opens (and truncates)
    # the same staged file: they must land before that, not after.
    data = _tar([("twice", os.urandom(16 * MIB)), ("twice", b"second")])
    for attempt in range(5):
        dest = tmp_path / f"dest{attempt}"
        safe_extract_stream(_reader(data), dest)
        assert (dest / "twice").read_bytes() == b"second"


@pytest.mark.root  # mounts a small tmpfs
def test_a_full_disk_fails_the_unpack_and_leaves_dest_untouched(tmp_path):
    disk = tmp_path / "small"
    disk.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)])
    assert done.returncode == 0, "cannot mount a tmpfs (this test runs as root)"
    try:
        dest = disk / "dest"
        dest.mkdir()
        (dest / "kept").write_bytes(b"as it was")
        data = _tar([("a", os.urandom(MIB)), ("b", os.urandom(4 * MIB))])
        before = _open_fds()
        with pytest.raises(FlashpodsError) as info:
            safe_extract_stream(_reader(data), dest)
        message = str(info.value)
        assert "No space left on device" in message
        assert message.endswith(f"nothing was written to {dest}.")
        assert sorted(p.name for p in dest.iterdir()) == ["kept"]
        assert (dest / "kept").read_bytes() == b"as it was"
        assert sorted(p.name for p in disk.iterdir()) == ["dest"]  # no staging left
        assert _open_fds() == before  # every staged file's descriptor was closed
    finally:
        subprocess.run(["umount", str(disk)], check=True)
