"""Unpacking under pressure: a name given twice after a large member keeps only the last
one, and a full disk fails the whole unpack with dest left as it was (no staging, no open
descriptors behind)."""

import io
import os
import subprocess
import tarfile

import pytest
from flashpods_mcp.errors import FlashpodsError
from flashpods_mcp.unpack import safe_extract_stream

MIB = 1024 * 1024


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


def test_a_name_given_twice_after_a_large_first_member_keeps_only_the_last(tmp_path):
    # The second member truncates the staged file the first one filled.
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
