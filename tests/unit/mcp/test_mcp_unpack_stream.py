"""One-pass unpacking: the stream goes to a staging directory beside dest and only a
complete, checked archive reaches dest. Whatever breaks (a hostile name late in the
stream, a cut connection, a corrupt header, kill -9), dest stays as it was.

Archives are built here with tarfile; they arrive through real pipes and a real
loopback HTTP server (the fake API) as well as through read(n) over bytes.
"""

import io
import os
import signal
import stat
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import flashpods_mcp
import pytest
from flashpods_mcp.config import load_settings
from flashpods_mcp.errors import FlashpodsError
from flashpods_mcp.operations import Flashpods
from flashpods_mcp.unpack import MAX_OPEN_DIRS, safe_extract_stream

MIB = 1024 * 1024
JOB = "job_0123456789ab"


def build(members, fmt=tarfile.PAX_FORMAT):
    """members: {name: bytes} for files, {name: "symlink"|"fifo"} for the rest (or a list
    of such pairs, to give a name twice)."""
    out = io.BytesIO()
    pairs = members.items() if isinstance(members, dict) else members
    with tarfile.open(fileobj=out, mode="w", format=fmt, encoding="utf-8") as tar:
        for name, what in pairs:
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            if isinstance(what, bytes):
                info.size = len(what)
                info.mode = 0o755 if name.endswith(".sh") else 0o644
                tar.addfile(info, io.BytesIO(what))
            else:
                info.type = {"symlink": tarfile.SYMTYPE, "fifo": tarfile.FIFOTYPE}[what]
                info.linkname = "/etc/passwd" if what == "symlink" else ""
                tar.addfile(info)
    return out.getvalue()


def reader(data, chunk=MIB):
    source = io.BytesIO(data)
    return lambda buffer: source.readinto(buffer[:chunk])


def tree(root: Path):
    """Everything under root: files with their bytes, dirs, links with their target."""
    found = {}
    for path in sorted(root.rglob("*")):
        name = str(path.relative_to(root))
        if path.is_symlink():
            found[name] = ("symlink", os.readlink(path))
        elif path.is_dir():
            found[name] = "dir"
        elif path.is_file():
            found[name] = path.read_bytes()
        else:
            found[name] = "other"
    return found


def leftovers(parent: Path):
    return sorted(p.name for p in parent.glob(".*.flashpods-partial-*"))


@pytest.fixture
def dest(tmp_path):
    """dest with something already in it, and a file outside it that must never change."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_bytes(b"original")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "kept").write_bytes(b"from an earlier fetch")
    return dest


LONG = "long/" + "n" * 110 + "/" + "ü" * 30 + ".bin"  # > 100 characters, non-ASCII
FILES = {
    "run.sh": b"#!/bin/sh\necho hi\n",
    LONG: os.urandom(12_345),
    "日本語/名前.txt": "内容\n".encode(),
    "five-mib": os.urandom(5 * MIB),
    **{f"many/f{i}": os.urandom(i * 101) for i in range(200)},
}


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT], ids=["pax", "gnu"])
@pytest.mark.parametrize("chunk", [511, 513, 4096 + 3, MIB, 64 * MIB])
def test_byte_exact_whatever_the_chunks(dest, fmt, chunk):
    result = safe_extract_stream(reader(build(FILES, fmt), chunk), dest)
    assert {f.path: f.size for f in result.written} == {n: len(d) for n, d in FILES.items()}
    assert tree(dest) == {
        "kept": b"from an earlier fetch",
        **FILES,
        "long": "dir",
        "long/" + "n" * 110: "dir",
        "many": "dir",
        "日本語": "dir",
    }
    assert not os.access(dest / "run.sh", os.X_OK)  # exec bits are dropped (unpack.py)
    assert (dest / LONG).stat().st_mtime == 1_700_000_000
    assert leftovers(dest.parent) == []


def test_one_byte_at_a_time(tmp_path):
    files = {LONG: os.urandom(3000), "b/c": b"x" * 1000}
    safe_extract_stream(reader(build(files), 1), tmp_path / "new")
    assert (tmp_path / "new" / LONG).read_bytes() == files[LONG]
    assert leftovers(tmp_path) == []


def test_more_directories_than_open_descriptors_kept(tmp_path):
    files = {f"d{i}/sub/f": str(i).encode() for i in range(MAX_OPEN_DIRS + 50)}
    result = safe_extract_stream(reader(build(files)), tmp_path / "new")
    assert len(result.written) == len(files)
    assert (tmp_path / "new" / f"d{MAX_OPEN_DIRS + 49}/sub/f").read_bytes() == b"305"


@pytest.mark.parametrize(
    "hostile", ["../outside/victim", "/tmp/flashpods-absolute-evil", "a/../../outside/victim"]
)
@pytest.mark.parametrize("dest_exists", [True, False])
def test_a_hostile_member_after_many_good_ones_leaves_dest_untouched(
    dest, hostile, dest_exists, tmp_path
):
    if not dest_exists:
        (dest / "kept").unlink()
        dest.rmdir()
    before = tree(dest) if dest_exists else None
    archive = build({**FILES, hostile: b"pwned"})
    with pytest.raises(FlashpodsError) as info:
        safe_extract_stream(reader(archive), dest)
    assert str(info.value).startswith("Refused the artifact archive: member")
    assert str(info.value).endswith(f"; nothing was written to {dest}.")
    assert (tree(dest) if dest_exists else dest.exists()) == (before if dest_exists else False)
    assert (tmp_path / "outside" / "victim").read_bytes() == b"original"
    assert not os.path.exists("/tmp/flashpods-absolute-evil")
    assert leftovers(tmp_path) == []


def test_a_nul_byte_in_a_pax_name_refuses_the_archive(tmp_path):
    info = tarfile.TarInfo("x")
    info.pax_headers = {"path": "evil\0name"}
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(info)
    with pytest.raises(FlashpodsError, match="has a NUL byte in its name; nothing was written"):
        safe_extract_stream(reader(out.getvalue()), tmp_path / "new")
    assert not (tmp_path / "new").exists() and leftovers(tmp_path) == []


def offset_of(archive, name):
    """Where member `name`'s data starts in the archive."""
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        return tar.getmember(name).offset_data


def end_of_members(archive):
    """Where the end-of-archive zero blocks start."""
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        last = tar.getmembers()[-1]
    return last.offset_data + last.size + (-last.size % tarfile.BLOCKSIZE)


@pytest.mark.parametrize(
    ("where", "words"),
    [
        ("mid-header", "inside a header"),
        ("mid-data", "inside 'five-mib'"),
        ("before-the-end-marker", "where a header was due"),
    ],
)
def test_a_truncated_stream_leaves_dest_untouched(dest, tmp_path, where, words):
    archive = build(FILES)
    data_at = offset_of(archive, "five-mib")
    cut = {
        "mid-header": data_at - 300,
        "mid-data": data_at + 3 * MIB,
        "before-the-end-marker": end_of_members(archive),
    }[where]
    before = tree(dest)
    with pytest.raises(FlashpodsError) as info:
        safe_extract_stream(reader(archive[:cut], 4096 + 3), dest)
    assert "The artifact archive is truncated" in str(info.value) and words in str(info.value)
    assert f"retry get_job_artifacts; nothing was written to {dest}." in str(info.value)
    assert tree(dest) == before
    assert leftovers(tmp_path) == []


def test_a_corrupt_header_checksum_is_refused(dest, tmp_path):
    archive = bytearray(build(FILES))
    header_at = offset_of(archive, "five-mib") - tarfile.BLOCKSIZE
    archive[header_at + 10] ^= 0x01  # one bit of the name
    before = tree(dest)
    with pytest.raises(FlashpodsError, match=f"bad checksum in the header at byte {header_at}"):
        safe_extract_stream(reader(bytes(archive)), dest)
    assert tree(dest) == before
    assert leftovers(tmp_path) == []


def test_a_hardlink_in_dest_is_replaced_not_written_through(dest, tmp_path):
    victim = tmp_path / "outside" / "victim"
    os.link(victim, dest / "linked")  # planted before the unpack: same inode as victim
    result = safe_extract_stream(reader(build({"linked": b"new content"})), dest)
    assert victim.read_bytes() == b"original"
    assert (dest / "linked").read_bytes() == b"new content"
    assert (dest / "linked").stat().st_ino != victim.stat().st_ino
    assert [f.path for f in result.written] == ["linked"]


def test_what_is_in_the_way_in_dest_is_left_alone_and_reported(dest, tmp_path):
    (dest / "adir").mkdir()
    (dest / "alink").symlink_to(tmp_path / "outside" / "victim")
    os.mkfifo(dest / "afifo")
    archive = build({"adir": b"1", "alink": b"2", "afifo": b"3", "fine": b"4"})
    result = safe_extract_stream(reader(archive), dest)
    reasons = {s.path: s.reason for s in result.skipped}
    assert reasons == {
        "adir": "not written: something in dest that is not a plain directory or file is in "
        "the way (a directory)",
        "alink": "not written: something in dest that is not a plain directory or file is in "
        "the way (a symlink)",
        "afifo": "not written: something in dest that is not a plain directory or file is in "
        "the way (a FIFO)",
    }
    assert [f.path for f in result.written] == ["fine"]
    assert (tmp_path / "outside" / "victim").read_bytes() == b"original"
    assert stat.S_ISFIFO((dest / "afifo").lstat().st_mode)
    assert leftovers(tmp_path) == []


def test_members_in_each_others_way_and_repeated_ones(tmp_path):
    archive = build(
        [
            ("a", b"a file first"),
            ("a/b", b"then a file under it"),  # a is no directory: skipped
            ("c/d", b"a file in c"),
            ("c", b"then c as a file"),  # c is a directory: skipped
            ("twice", b"first"),
            ("link", "symlink"),
            ("pipe", "fifo"),
            ("twice", b"second"),  # a member given twice: the last one wins
        ]
    )
    result = safe_extract_stream(reader(archive), tmp_path / "new")
    assert tree(tmp_path / "new") == {
        "a": b"a file first",
        "c": "dir",
        "c/d": b"a file in c",
        "twice": b"second",
    }
    assert [f.path for f in result.written] == ["a", "c/d", "twice"]
    assert {s.path: s.reason.split(":")[0] for s in result.skipped} == {
        "a/b": "not written (Not a directory)",
        "c": "not written (Is a directory)",
        "link": "symlink to '/etc/passwd' not unpacked (links never are)",
        "pipe": "device or FIFO not unpacked",
    }


# -- real transports -------------------------------------------------------------------

KILL_SCRIPT = """
import os, sys
from pathlib import Path
from flashpods_mcp.unpack import safe_extract_stream
safe_extract_stream(lambda buffer: os.readv(0, [buffer]), Path(sys.argv[1]))
"""


@pytest.mark.parametrize("dest_exists", [True, False])
def test_kill_9_mid_unpack_leaves_dest_untouched(dest, tmp_path, dest_exists):
    if not dest_exists:
        (dest / "kept").unlink()
        dest.rmdir()
    before = tree(dest) if dest_exists else None
    first, second = os.urandom(2 * MIB), os.urandom(4 * MIB)
    archive = build({"kept": first, "second": second})
    stall_at = offset_of(archive, "second") + MIB  # a quarter of the second member
    package = Path(flashpods_mcp.__file__).parent.parent  # the code under test, not a copy
    unpacker = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, str(dest)],
        stdin=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(package)},
    )
    try:
        unpacker.stdin.write(archive[:stall_at])  # ... and then nothing more: stalled
        unpacker.stdin.flush()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            staged = [tmp_path / name for name in leftovers(tmp_path)]
            if staged and (staged[0] / "second").exists():
                break  # the first member is complete in staging, the second under way
            time.sleep(0.02)
        else:
            raise AssertionError("the unpacker never staged the first member")
        os.kill(unpacker.pid, signal.SIGKILL)
    finally:
        unpacker.kill()  # no-op when already dead
        unpacker.wait(timeout=30)
        unpacker.stdin.close()
    assert unpacker.returncode == -signal.SIGKILL
    # dest: exactly as it was (or still absent); beside it, the staging directory
    assert (tree(dest) if dest_exists else dest.exists()) == (before if dest_exists else False)
    [partial] = leftovers(tmp_path)
    assert partial.startswith(".dest.flashpods-partial-")
    assert stat.S_IMODE((tmp_path / partial).stat().st_mode) == 0o700
    assert (tmp_path / partial / "kept").read_bytes() == first


def test_fetch_artifacts_over_loopback_http(fake_api, tmp_path, dest):
    archive = build(FILES)
    fake_api.routes[("GET", f"/jobs/{JOB}/artifacts.tar")] = (200, archive)
    settings = load_settings(
        {"HOME": str(tmp_path), "FLASHPODS_API_URL": fake_api.url, "FLASHPODS_API_TOKEN": "t"}
    )
    progress = []
    result = Flashpods(settings).fetch_artifacts(JOB, dest, lambda *a: progress.append(a))
    assert len(result.written) == len(FILES)
    assert (dest / "five-mib").read_bytes() == FILES["five-mib"]
    assert progress[-1] == (len(archive), len(archive), f"downloading artifacts of {JOB}")
    assert leftovers(tmp_path) == []


def test_fetch_artifacts_whose_download_breaks_off(fake_api, tmp_path, dest):
    archive = build(FILES)
    sent = offset_of(archive, "five-mib") + 2 * MIB

    def break_off(handler):
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(archive)))
        handler.end_headers()
        handler.wfile.write(archive[:sent])
        handler.close_connection = True

    fake_api.routes[("GET", f"/jobs/{JOB}/artifacts.tar")] = break_off
    settings = load_settings(
        {"HOME": str(tmp_path), "FLASHPODS_API_URL": fake_api.url, "FLASHPODS_API_TOKEN": "t"}
    )
    before = tree(dest)
    with pytest.raises(FlashpodsError) as info:
        Flashpods(settings).fetch_artifacts(JOB, dest)
    assert str(info.value).startswith(f"The artifact download of {JOB} from {fake_api.url}")
    assert "broke off after" in str(info.value)
    assert str(info.value).endswith(f"retry get_job_artifacts; nothing was written to {dest}.")
    assert tree(dest) == before
    assert leftovers(tmp_path) == []


# -- dest on its own filesystem ----------------------------------------------------------


@pytest.fixture
def tmpfs(tmp_path):
    """Mount tmpfs file systems (root only); unmounted at the end."""
    mounted = []

    def mount(path: Path):
        path.mkdir(exist_ok=True)
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root")
        done = subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(path)], capture_output=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounted.append(path)

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", str(path)], check=True)


@pytest.mark.root  # mounts tmpfs file systems
def test_dest_that_is_a_mount_point_stages_inside_it(tmp_path, tmpfs):
    dest = tmp_path / "mnt"
    tmpfs(dest)
    tmpfs(dest / "inner")  # and a mount inside dest: rename cannot reach it, a copy does
    (dest / "inner" / "old").write_bytes(b"old")
    files = {"a": os.urandom(MIB), "inner/old": b"replaced", "inner/deep/b": b"b"}
    result = safe_extract_stream(reader(build(files)), dest)
    assert [f.path for f in result.written] == list(files)
    assert tree(dest) == {**files, "inner": "dir", "inner/deep": "dir"}
    assert leftovers(tmp_path) == [] and leftovers(dest) == []
    assert (dest / "inner" / "old").stat().st_mtime == 1_700_000_000
