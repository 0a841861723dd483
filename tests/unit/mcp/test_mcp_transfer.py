"""rsync uploads against a real rsync daemon on loopback: filters, size cap, progress,
the link-dest basis that makes a re-upload cheap, and refused connections."""

import os
import signal
import subprocess

import pytest
from flashpods_mcp import transfer
from flashpods_mcp.config import load_settings
from flashpods_mcp.errors import FlashpodsError
from flashpods_mcp.operations import Flashpods


def make_tree(root, files=50, size=4096):
    (root / "src").mkdir(parents=True)
    for i in range(files):
        (root / "src" / f"f{i:04}.txt").write_bytes(os.urandom(size))
    return root


@pytest.fixture
def project(tmp_path):
    p = tmp_path / "project"
    make_tree(p)
    (p / ".git" / "objects").mkdir(parents=True)
    (p / ".git" / "objects" / "pack").write_bytes(b"g" * 100_000)
    (p / ".gitignore").write_text("build/\n*.log\n")
    (p / "build").mkdir()
    (p / "build" / "big.o").write_bytes(b"o" * 200_000)
    (p / "debug.log").write_bytes(b"l" * 50_000)
    (p / "flashpods-artifacts" / "job_x").mkdir(parents=True)
    (p / "flashpods-artifacts" / "job_x" / "old").write_bytes(b"a" * 30_000)
    return p


def sent_names(root):
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


@pytest.mark.slow  # runs the rsync program
def test_measure_applies_the_default_excludes(project):
    size = transfer.measure(project, transfer.filter_args())
    # 50 files of 4096 bytes plus the 13-byte .gitignore; no .git, build/, *.log, artifacts
    assert size.bytes == 50 * 4096 + len("build/\n*.log\n")


@pytest.mark.slow  # runs the rsync program
def test_include_git_and_extra_excludes(project):
    with_git = transfer.measure(project, transfer.filter_args(include_git=True))
    assert with_git.bytes == 50 * 4096 + 13 + 100_000
    fewer = transfer.measure(project, transfer.filter_args(exclude=["f000*"]))
    assert fewer.bytes == 40 * 4096 + 13


@pytest.mark.parametrize("bad", ["", "  ", "a\nb"])
def test_unusable_exclude_patterns(bad):
    with pytest.raises(FlashpodsError, match="not usable"):
        transfer.filter_args(exclude=[bad])


@pytest.mark.slow  # runs the rsync program
def test_size_cap_is_a_clear_error(project):
    size = transfer.measure(project, transfer.filter_args())
    with pytest.raises(FlashpodsError, match="more than the cap of 1,000 bytes"):
        transfer.check_size(project, size, 1000)


def test_upload_sends_the_filtered_tree_with_progress(project, rsync_daemon):
    seen = []
    stats = transfer.upload(
        project,
        rsync_daemon.url,
        "up_aaaaaaaaaaaaaaaa",
        transfer.filter_args(),
        progress=lambda done, total, msg: seen.append((done, total)),
    )
    landed = rsync_daemon.uploads / "up_aaaaaaaaaaaaaaaa"
    assert sent_names(landed) == {f"src/f{i:04}.txt" for i in range(50)} | {".gitignore"}
    assert stats.total_size == 50 * 4096 + 13
    assert stats.bytes_sent >= stats.total_size  # random data: no compression win
    assert seen and seen[-1][0] == stats.total_size


def test_link_dest_basis_makes_a_reupload_cheap(tmp_path, rsync_daemon):
    tree = make_tree(tmp_path / "many", files=1000, size=2048)
    filters = transfer.filter_args()
    first = transfer.upload(tree, rsync_daemon.url, "up_1111111111111111", filters)
    # what the API does at job start: the upload becomes the kept basis
    bases = rsync_daemon.uploads / ".bases"
    bases.mkdir()
    (rsync_daemon.uploads / "up_1111111111111111").rename(bases / "up_1111111111111111")
    changed = tree / "src" / "f0000.txt"
    changed.write_bytes(os.urandom(2048))  # one file changed
    # rsync's quick check compares size and mtime: rewritten within the same second at
    # the same size, the file would pass for unchanged (and be hard-linked to the basis).
    later = changed.stat().st_mtime + 10
    os.utime(changed, (later, later))
    second = transfer.upload(
        tree,
        rsync_daemon.url,
        "up_2222222222222222",
        filters,
        link_dest="../.bases/up_1111111111111111/",
    )
    assert first.bytes_sent > 2_000_000
    assert second.bytes_sent < first.bytes_sent / 10, (first, second)
    assert second.files_transferred == 1
    new = rsync_daemon.uploads / "up_2222222222222222" / "src"
    old = bases / "up_1111111111111111" / "src"
    # unchanged files are hard links to the basis, the changed one is new
    assert os.stat(new / "f0001.txt").st_ino == os.stat(old / "f0001.txt").st_ino
    assert os.stat(new / "f0000.txt").st_ino != os.stat(old / "f0000.txt").st_ino


def test_unknown_module_is_explained(project, rsync_daemon):
    url = rsync_daemon.url.replace("/uploads", "/nosuchmodule")
    with pytest.raises(FlashpodsError, match="no such module"):
        transfer.upload(project, url, "up_aaaaaaaaaaaaaaaa", transfer.filter_args())


@pytest.mark.slow  # runs the rsync program
def test_refused_port_is_explained(project, unused_port):
    url = f"rsync://127.0.0.1:{unused_port}/uploads"
    with pytest.raises(FlashpodsError, match="refused the connection") as info:
        transfer.upload(project, url, "up_aaaaaaaaaaaaaaaa", transfer.filter_args())
    assert "FLASHPODS_RSYNC_URL" in str(info.value)


def test_parse_stats():
    text = (
        "Number of files: 1,001 (reg: 1,000, dir: 1)\n"
        "Number of regular files transferred: 3\n"
        "Total file size: 2,048,000 bytes\n"
        "Literal data: 6,144 bytes\n"
        "Total bytes sent: 40,123\n"
    )
    s = transfer.parse_stats(text)
    assert (s.files, s.files_transferred, s.total_size, s.literal_bytes, s.bytes_sent) == (
        1001,
        3,
        2_048_000,
        6144,
        40123,
    )


# -- the size check beside the upload (issue 18, bench P3) ------------------------


@pytest.mark.slow  # runs the rsync program
def test_size_check_kills_the_upload_it_raced(project):
    check = transfer.SizeCheck(project, transfer.filter_args(), cap=1000)
    stand_in = subprocess.Popen(["sleep", "60"])  # an upload still sending
    check.attach(stand_in)
    with pytest.raises(FlashpodsError, match="more than the cap of 1,000 bytes"):
        check.result()
    assert stand_in.wait(timeout=10) == -signal.SIGKILL


@pytest.mark.slow  # runs the rsync program
def test_an_upload_attached_after_a_failed_check_is_killed_at_once(project):
    check = transfer.SizeCheck(project, transfer.filter_args(), cap=1000)
    with pytest.raises(FlashpodsError):
        check.result()
    late = subprocess.Popen(["sleep", "60"])
    check.attach(late)
    assert late.wait(timeout=10) == -signal.SIGKILL


@pytest.mark.slow  # runs the rsync program
def test_a_tree_under_the_cap_leaves_the_upload_alone(project):
    check = transfer.SizeCheck(project, transfer.filter_args(), cap=10**9)
    quick = subprocess.Popen(["true"])
    check.attach(quick)
    assert check.result().bytes == 50 * 4096 + 13
    assert quick.wait(timeout=10) == 0


@pytest.mark.slow  # runs rsync against a real daemon
def test_spawn_of_a_tree_over_the_cap_fails_with_the_size_and_creates_no_job(
    project, rsync_daemon, tmp_path
):
    created = []

    class Api:
        def create_upload(self, basis):
            return {"upload_id": "up_bbbbbbbbbbbbbbbb"}

        def create_job(self, request):
            created.append(request)
            return {"id": "job_aaaaaaaaaaaa"}

    settings = load_settings(
        {
            "HOME": str(tmp_path),
            "FLASHPODS_API_URL": "http://127.0.0.1:9",
            "FLASHPODS_API_TOKEN": "t",
            "FLASHPODS_RSYNC_URL": rsync_daemon.url,
            "FLASHPODS_MAX_UPLOAD_BYTES": "1000",
        }
    )
    with pytest.raises(FlashpodsError, match="more than the cap of 1,000 bytes"):
        Flashpods(settings, api=Api()).spawn("worker", command="true", source=project)
    assert created == []
