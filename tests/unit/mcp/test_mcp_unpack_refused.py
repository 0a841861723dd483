"""A job's output never writes git metadata or other files tools run by themselves, never
keeps an exec bit, and no archive shape (5,000 levels deep, a flood of members) makes
the unpack raise anything but a clear FlashpodsError.

The archives are built here with tarfile; tests/integration/mcp/test_mcp_artifact_attacks.py
makes the same trees in a real job and fetches them from a real dev host.
"""

import io
import os
import resource
import stat
import tarfile

import pytest
from flashpods_mcp.config import load_settings
from flashpods_mcp.errors import FlashpodsError
from flashpods_mcp.operations import Flashpods
from flashpods_mcp.refused_names import fold
from flashpods_mcp.unpack import UnpackLimits, safe_extract

HOOK = b"#!/bin/sh\ntouch /tmp/pwned\n"


def tar_of(path, files=(), dirs=(), mode=0o644):
    """files: (name, bytes); dirs: names."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in dirs:
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    return path


def project(tmp_path):
    """A project checkout with its own .git, as dest=<project> finds it."""
    root = tmp_path / "project"
    (root / ".git" / "hooks").mkdir(parents=True)
    (root / ".git" / "config").write_text("[core]\n\tbare = false\n")
    return root


def all_files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir())


@pytest.mark.parametrize(
    "name",
    [
        ".git/hooks/pre-commit",  # the reproduced attack
        ".git/config",  # core.fsmonitor runs at the next git status
        ".GIT/hooks/pre-commit",  # macOS: the same directory
        "sub/.Git/config",  # a nested repository is just as bad
        ".git",  # a gitfile (gitdir: ...) makes a worktree point anywhere
        ".git./config",  # NTFS drops trailing dots
        ".git /config",  # ... and trailing spaces
        ".git::$INDEX_ALLOCATION/config",  # an NTFS stream name is the directory
        "GIT~1/config",  # an NTFS short name of .git
        ".g\u200cit/config",  # HFS+ ignores U+200C
        ".git\ufeff/config",  # and U+FEFF
        "\uff0egit/config",  # a fullwidth dot, folded by NFKC: refused to be safe
        ".gitmodules",
        "deep/.GITATTRIBUTES",
        ".husky/pre-commit",
        ".pre-commit-config.yaml",
        ".vscode/tasks.json",
        ".idea/workspace.xml",
        ".envrc",
        ".env",
        ".env.local",
        ".hg/hgrc",
        ".nvim.lua",
        "bare/HEAD",  # with objects/ and refs/: a bare repository
    ],
)
def test_names_tools_run_are_refused_and_reported(tmp_path, name):
    dest = project(tmp_path)
    before = (dest / ".git" / "config").read_text()
    tar = tar_of(tmp_path / "a.tar", files=[(name, HOOK), ("ok.txt", b"ok")], mode=0o755)
    result = safe_extract(tar, dest)
    assert [f.path for f in result.written] == ["ok.txt"]
    assert all_files(dest) == [".git/config", "ok.txt"]
    assert (dest / ".git" / "config").read_text() == before
    [skipped] = result.skipped
    assert skipped.path == name.strip("/") and skipped.reason.startswith("refused: ")


@pytest.mark.parametrize(
    "name",
    [".gitignore", ".github/workflows/ci.yml", "git/config", "HEADER.md", "src/head.c", "a~b"],
)
def test_ordinary_names_that_look_alike_are_written(tmp_path, name):
    dest = tmp_path / "dest"
    result = safe_extract(tar_of(tmp_path / "a.tar", files=[(name, b"x")]), dest)
    assert [f.path for f in result.written] == [name] and not result.skipped


def test_a_directory_named_head_is_fine_and_fold_is_what_macos_compares():
    assert fold(".GiT") == ".git" and fold(".g\u200dit. ") == ".git"
    assert fold("e\u0301") == fold("\u00e9")  # NFD and NFC forms of one name are one name


def test_exec_bits_are_dropped_and_said(tmp_path):
    dest = tmp_path / "dest"
    result = safe_extract(tar_of(tmp_path / "a.tar", files=[("run.sh", b"echo")], mode=0o755), dest)
    assert stat.S_IMODE((dest / "run.sh").stat().st_mode) == 0o644
    assert [(f.path, f.exec_bit_dropped) for f in result.written] == [("run.sh", True)]


@pytest.mark.parametrize("inside", [".git", ".git/hooks", "sub/.GIT/x"])
def test_a_dest_inside_git_metadata_is_refused_before_anything_is_read(tmp_path, inside):
    dest = project(tmp_path) / inside
    with pytest.raises(FlashpodsError, match="git metadata"):
        safe_extract(tmp_path / "never-opened.tar", dest)


def test_a_bare_repository_in_dest_is_not_written_into(tmp_path):
    dest = tmp_path / "dest"
    bare = dest / "mirror.git"
    for d in ("objects", "refs", "hooks"):
        (bare / d).mkdir(parents=True)
    (bare / "HEAD").write_text("ref: refs/heads/main\n")
    tar = tar_of(tmp_path / "a.tar", files=[("mirror.git/hooks/post-checkout", HOOK), ("a", b"")])
    result = safe_extract(tar, dest)
    assert [f.path for f in result.written] == ["a"]
    assert not (bare / "hooks" / "post-checkout").exists()
    assert "bare git repository" in result.skipped[0].reason
    with pytest.raises(FlashpodsError, match="git repository"):
        safe_extract(tar, bare / "hooks")


def test_5000_levels_deep_is_no_recursion_error_and_the_rest_arrives(tmp_path):
    """Fails before the fix: the directory cache recursed once per level."""
    deep = "/".join(["d"] * 5000)
    tar = tar_of(
        tmp_path / "a.tar",
        dirs=["/".join(["d"] * n) for n in range(1, 5001)],
        files=[(deep + "/bottom", b"x"), ("top.txt", b"top")],
    )
    dest = tmp_path / "dest"
    result = safe_extract(tar, dest)
    assert [f.path for f in result.written] == ["top.txt"]
    limit = UnpackLimits().max_depth
    assert (dest / "/".join(["d"] * limit)).is_dir()
    assert not (dest / "/".join(["d"] * (limit + 1))).exists()
    reasons = [s.reason for s in result.skipped]
    assert len(result.skipped) == 1 and f"deeper than {limit} levels" in reasons[0]
    assert result.skipped_more == 5000 - limit  # every level below, counted not listed
    assert os.listdir(tmp_path) == ["a.tar", "dest"]  # no staging directory left


def test_a_flood_of_members_refuses_the_archive_and_writes_nothing(tmp_path):
    tar = tar_of(tmp_path / "a.tar", files=[(f"f{i}", b"") for i in range(101)])
    dest = tmp_path / "dest"
    with pytest.raises(FlashpodsError, match="more than 100 members") as err:
        safe_extract(tar, dest, UnpackLimits(max_members=100))
    assert "nothing was written" in str(err.value)
    assert os.listdir(tmp_path) == ["a.tar"]


def test_a_flood_of_skipped_members_is_counted_not_listed(tmp_path):
    # one cause (a refused .git) makes one line, however many members lie under it
    same = [(f".git/f{i}", b"") for i in range(3000)]
    result = safe_extract(tar_of(tmp_path / "a.tar", files=same), tmp_path / "a")
    assert len(result.skipped) == 1 and result.skipped_more == 2999
    # distinct causes are listed up to the cap and counted beyond it
    distinct = [(f"d{i}/.git", b"") for i in range(3000)]
    result = safe_extract(tar_of(tmp_path / "b.tar", files=distinct), tmp_path / "b")
    cap = UnpackLimits().max_reported
    assert len(result.skipped) == cap and result.skipped_more == 3000 - cap


def test_many_deep_paths_stay_within_a_small_descriptor_limit(tmp_path):
    """Both directory caches (staging and dest) are open at once: each must stay near
    MAX_OPEN_DIRS even when every path is 256 levels deep (before: 513 each, EMFILE
    under the usual 1,024)."""
    names = ["/".join([f"t{i}", *["d"] * 254, "f"]) for i in range(12)]
    tar = tar_of(tmp_path / "a.tar", files=[(n, b"x") for n in names])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (700, hard))
    try:
        result = safe_extract(tar, tmp_path / "dest")
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert sorted(f.path for f in result.written) == sorted(names) and not result.skipped


def test_a_compromised_host_over_http_gets_no_hook_and_no_traceback(fake_api, tmp_path):
    """What the real host never serves (it lists 10,000 entries of 4 KiB paths at most) a
    compromised one can: 5,000 levels and a hook, through the real HTTP client path."""
    deep = "/".join(["d"] * 5000)
    tar = tar_of(
        tmp_path / "a.tar",
        files=[(deep + "/bottom", b"x"), (".git/hooks/pre-commit", HOOK), ("ok.txt", b"ok")],
        mode=0o755,
    )
    fake_api.routes[("GET", "/jobs/job_0123456789ab/artifacts.tar")] = (200, tar.read_bytes())
    settings = load_settings(
        {"HOME": str(tmp_path), "FLASHPODS_API_URL": fake_api.url, "FLASHPODS_API_TOKEN": "t"}
    )
    dest = project(tmp_path)
    result = Flashpods(settings).fetch_artifacts("job_0123456789ab", dest)
    assert [(f.path, f.exec_bit_dropped) for f in result.written] == [("ok.txt", True)]
    assert all_files(dest) == [".git/config", "ok.txt"]
    assert [s.reason.split(":")[0] for s in result.skipped] == ["not written", "refused"]
