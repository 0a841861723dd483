"""Unpacking artifact tars: nothing lands outside dest, whatever the archive says.

Each archive is built here with tarfile, including the hostile members a compromised
host or a malicious job could produce.
"""

import io
import os
import tarfile

import pytest
from flashpods_mcp.errors import FlashpodsError
from flashpods_mcp.unpack import safe_extract


def build_tar(path, members):
    """members: (name, kind, payload) with kind file|dir|symlink|hardlink|fifo|chr."""
    with tarfile.open(path, "w") as tar:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            if kind == "file":
                data = payload if isinstance(payload, bytes) else payload.encode()
                info.size = len(data)
                info.mode = 0o755 if name.endswith(".sh") else 0o644
                tar.addfile(info, io.BytesIO(data))
                continue
            info.type = {
                "dir": tarfile.DIRTYPE,
                "symlink": tarfile.SYMTYPE,
                "hardlink": tarfile.LNKTYPE,
                "fifo": tarfile.FIFOTYPE,
                "chr": tarfile.CHRTYPE,
            }[kind]
            if kind in ("symlink", "hardlink"):
                info.linkname = payload
            tar.addfile(info)
    return path


@pytest.fixture
def dirs(tmp_path):
    dest = tmp_path / "dest"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("original")
    return tmp_path, dest, outside


def snapshot(root):
    return sorted(
        (str(p.relative_to(root)), p.is_symlink() or p.read_bytes() if p.is_file() else None)
        for p in root.rglob("*")
    )


def test_regular_files_and_dirs_are_written_with_sizes(dirs):
    tmp, dest, _ = dirs
    tar = build_tar(
        tmp / "a.tar",
        [
            ("./", "dir", None),
            ("out", "dir", None),
            ("out/result.txt", "file", "42\n"),
            ("run.sh", "file", "#!/bin/sh\n"),
        ],
    )
    result = safe_extract(tar, dest)
    assert [(f.path, f.size) for f in result.written] == [("out/result.txt", 3), ("run.sh", 10)]
    assert (dest / "out/result.txt").read_text() == "42\n"
    assert not os.access(dest / "run.sh", os.X_OK)  # a job's exec bit never survives
    assert [f.exec_bit_dropped for f in result.written] == [False, True]
    assert result.skipped == []


@pytest.mark.parametrize(
    ("members", "skipped_reason"),
    [
        # a symlink to a host file: never created
        ([("passwd", "symlink", "/etc/passwd")], "symlink to '/etc/passwd'"),
        # a relative symlink that climbs out
        ([("up", "symlink", "../../outside/victim")], "symlink"),
        # a hardlink to a file outside dest
        ([("hl", "hardlink", "/etc/passwd")], "hardlink to '/etc/passwd'"),
        # a hardlink to an earlier member: links are never made, even harmless ones
        ([("a", "file", "x"), ("b", "hardlink", "a")], "hardlink"),
        # a FIFO and a device
        ([("pipe", "fifo", None)], "device or FIFO"),
        ([("null", "chr", None)], "device or FIFO"),
    ],
)
def test_links_devices_and_fifos_are_skipped(dirs, members, skipped_reason):
    tmp, dest, outside = dirs
    before = snapshot(outside)
    result = safe_extract(build_tar(tmp / "x.tar", members), dest)
    assert skipped_reason in result.skipped[-1].reason
    assert not any(p.is_symlink() for p in dest.rglob("*"))
    assert all(p.is_file() or p.is_dir() for p in dest.rglob("*"))
    assert snapshot(outside) == before


def test_a_skipped_link_cannot_redirect_a_later_member(dirs):
    tmp, dest, outside = dirs
    tar = build_tar(
        tmp / "x.tar",
        [("evil", "symlink", str(outside)), ("evil/victim", "file", "pwned")],
    )
    result = safe_extract(tar, dest)
    assert (outside / "victim").read_text() == "original"
    assert (dest / "evil").is_dir() and not (dest / "evil").is_symlink()
    assert [f.path for f in result.written] == ["evil/victim"]


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("/tmp/flashpods-absolute-evil", "absolute path"),  # absolute member name
        ("../outside/victim", "'..'"),  # climbs out of dest
        ("ok/../../outside/victim", "'..'"),  # climbs out from a subdirectory
    ],
)
def test_unsafe_names_refuse_the_whole_archive(dirs, name, why):
    tmp, dest, outside = dirs
    tar = build_tar(tmp / "x.tar", [("first", "file", "written?"), (name, "file", "pwned")])
    with pytest.raises(FlashpodsError, match="Refused the artifact archive") as info:
        safe_extract(tar, dest)
    assert why in str(info.value)
    assert "nothing was written" in str(info.value)
    assert not dest.exists()  # not even the harmless first member
    assert (outside / "victim").read_text() == "original"
    assert not os.path.exists("/tmp/flashpods-absolute-evil")


def test_existing_symlink_in_dest_is_not_followed(dirs):
    tmp, dest, outside = dirs
    dest.mkdir()
    (dest / "sub").symlink_to(outside)  # planted before the unpack
    (dest / "file").symlink_to(outside / "victim")
    tar = build_tar(tmp / "x.tar", [("sub/victim", "file", "pwned"), ("file", "file", "pwned")])
    result = safe_extract(tar, dest)
    assert (outside / "victim").read_text() == "original"
    assert result.written == []
    assert {s.path for s in result.skipped} == {"sub/victim", "file"}


def test_existing_fifo_in_dest_does_not_hang(dirs):
    tmp, dest, _ = dirs
    dest.mkdir()
    os.mkfifo(dest / "f")
    result = safe_extract(build_tar(tmp / "x.tar", [("f", "file", "data")]), dest)
    assert [s.path for s in result.skipped] == ["f"]


def test_overwrites_same_name_inside_dest(dirs):
    tmp, dest, _ = dirs
    dest.mkdir()
    (dest / "r").write_text("old and longer")
    safe_extract(build_tar(tmp / "x.tar", [("r", "file", "new")]), dest)
    assert (dest / "r").read_text() == "new"


def test_gzip_and_garbage(dirs):
    tmp, dest, _ = dirs
    gz = tmp / "a.tar.gz"
    with tarfile.open(gz, "w:gz") as tar:
        info = tarfile.TarInfo("z")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"z"))
    assert [f.path for f in safe_extract(gz, dest).written] == ["z"]
    (tmp / "junk").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(FlashpodsError, match="not a readable tar"):
        safe_extract(tmp / "junk", tmp / "dest2")


def test_dest_that_is_a_file(dirs):
    tmp, dest, _ = dirs
    dest.write_text("a file, not a directory")
    with pytest.raises(FlashpodsError, match="Cannot unpack into"):
        safe_extract(build_tar(tmp / "x.tar", [("f", "file", "data")]), dest)
    assert dest.read_text() == "a file, not a directory"


@pytest.mark.parametrize("mode", ["w", "w:gz"])
def test_large_members_are_byte_exact_in_plain_and_compressed_archives(tmp_path, mode):
    # A plain tar is copied in the kernel (copy_file_range at each member's data offset);
    # a compressed one goes through Python. Both must give the same bytes.
    blobs = {f"d/blob{i}": os.urandom(3 * 1024 * 1024 + i) for i in range(3)}
    archive = tmp_path / "a.tar"
    with tarfile.open(archive, mode) as tar:
        for name, data in blobs.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    dest = tmp_path / "dest"
    safe_extract(archive, dest)
    for name, data in blobs.items():
        assert (dest / name).read_bytes() == data
