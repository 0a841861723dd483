"""Where the unpack stages and what it leaves behind: inside an MCP root when dest is the
root itself (nothing is created outside it), dest as it was after a refusal or a full
disk (no staging, no open descriptors behind), and a name given twice after a large
member keeps only the last one."""

import io
import os
import subprocess
import tarfile

import pytest
from flashpods_mcp.config import load_settings
from flashpods_mcp.confine import enclosing_root
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


def _watching_reader(data: bytes, seen: list, outside, root):
    """readinto(buffer) that, half way through, records what exists outside and inside
    the root."""
    source = io.BytesIO(data)

    def readinto(buffer):
        if source.tell() >= len(data) // 2 and not seen:
            seen.append((sorted(os.listdir(outside)), sorted(os.listdir(root))))
        return source.readinto(buffer[:MIB])

    return readinto


def test_dest_that_is_the_root_stages_inside_it(tmp_path):
    root = tmp_path / "project"
    root.mkdir()
    (root / "kept").write_bytes(b"mine")
    seen = []
    data = _tar([("a", os.urandom(2 * MIB)), ("b/c", os.urandom(2 * MIB))])
    result = safe_extract_stream(_watching_reader(data, seen, tmp_path, root), root, root)
    [(outside_mid, inside_mid)] = seen
    assert outside_mid == ["project"]  # nothing beside the root, ever
    assert any(n.startswith(".project.flashpods-partial-") for n in inside_mid)
    assert [f.path for f in result.written] == ["a", "b/c"]
    assert sorted(os.listdir(root)) == ["a", "b", "kept"]  # staging gone at the end


def test_a_refused_archive_leaves_the_root_as_it_was(tmp_path):
    root = tmp_path / "project"
    root.mkdir()
    (root / "kept").write_bytes(b"mine")
    data = _tar([("a", os.urandom(MIB)), ("../escape", b"x")])
    with pytest.raises(FlashpodsError, match="nothing was written"):
        safe_extract_stream(io.BytesIO(data).readinto, root, root)
    assert sorted(os.listdir(root)) == ["kept"]
    assert sorted(os.listdir(tmp_path)) == ["project"]


def test_an_absent_dest_inside_the_root_stays_absent_after_a_failure(tmp_path):
    root = tmp_path / "project"
    root.mkdir()
    dest = root / "out"
    data = _tar([("a", os.urandom(MIB))])[: MIB // 2]  # cut short
    with pytest.raises(FlashpodsError, match="nothing was written"):
        safe_extract_stream(io.BytesIO(data).readinto, dest, root)
    assert os.listdir(root) == []


def test_enclosing_root_is_the_outermost_allowed_directory(tmp_path):
    settings = load_settings(
        {"HOME": str(tmp_path / "home"), "FLASHPODS_ALLOWED_PATHS": str(tmp_path / "allowed")}
    )
    roots = [tmp_path / "a", tmp_path / "a" / "b"]
    assert enclosing_root(tmp_path / "a" / "b" / "c", roots, settings) == tmp_path / "a"
    assert enclosing_root(tmp_path / "allowed" / "x", roots, settings) == tmp_path / "allowed"
    assert enclosing_root(tmp_path / "elsewhere", roots, settings) is None
    assert enclosing_root(tmp_path / "a", None, settings) is None  # the CLI: no roots


def _reader(data: bytes):
    source = io.BytesIO(data)
    return source.readinto


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
