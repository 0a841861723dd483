"""--normalize: chmod u+rwX,g+rwX over a tree, never following a symlink.
Run as the flashpods user on its own files (root would bypass every mode)."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

from helper_support import base_env

FLASHPODS_UID = 1001


def as_flashpods(helper: Path, args: list[str], workdir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["setpriv", "--reuid=1001", "--regid=1001", "--clear-groups", str(helper), *args],
        env=base_env(workdir),
        capture_output=True,
        text=True,
        timeout=60,
    )


def chown_tree(root: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.lchown(Path(dirpath) / name, FLASHPODS_UID, FLASHPODS_UID)
    os.lchown(root, FLASHPODS_UID, FLASHPODS_UID)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_normalize_fixes_a_locked_tree_and_never_follows_links(helper, workdir):
    tree = workdir / "leftovers"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "a" / "b" / "f").write_text("f")
    (tree / "a" / "tool").write_text("#!/bin/sh\n")
    (tree / "top").write_text("t")
    outside = workdir / "outside"
    outside.write_text("must stay 0600")
    outside_dir = workdir / "outside-dir"
    outside_dir.mkdir()
    (outside_dir / "g").write_text("g")
    os.symlink(outside, tree / "a" / "to-outside-file")
    os.symlink(outside_dir, tree / "to-outside-dir")
    chown_tree(tree)
    for path in (outside, outside_dir, outside_dir / "g"):
        os.chown(path, FLASHPODS_UID, FLASHPODS_UID)
    outside.chmod(0o600)
    (outside_dir / "g").chmod(0o600)
    outside_dir.chmod(0o700)
    (tree / "a" / "tool").chmod(0o100)  # executable for its owner only
    (tree / "a" / "b" / "f").chmod(0o000)
    (tree / "top").chmod(0o000)
    (tree / "a" / "b").chmod(0o000)
    (tree / "a").chmod(0o000)
    tree.chmod(0o000)

    result = as_flashpods(helper, ["--normalize", str(tree)], workdir)

    assert result.returncode == 0, result.stderr
    assert f"normalized {tree}: 6 entries, 6 changed, 0 failed" in result.stdout
    assert mode(tree) == 0o770
    assert mode(tree / "a") == 0o770
    assert mode(tree / "a" / "b") == 0o770
    assert mode(tree / "a" / "b" / "f") == 0o660
    assert mode(tree / "top") == 0o660
    assert mode(tree / "a" / "tool") == 0o770  # X: it was executable
    assert mode(outside) == 0o600
    assert mode(outside_dir) == 0o700
    assert mode(outside_dir / "g") == 0o600


def test_normalize_keeps_other_bits_and_counts_unchanged(helper, workdir):
    tree = workdir / "ok"
    tree.mkdir()
    (tree / "shared").write_text("s")
    chown_tree(tree)
    tree.chmod(0o2775)
    (tree / "shared").chmod(0o664)

    result = as_flashpods(helper, ["--normalize", str(tree)], workdir)

    assert result.returncode == 0, result.stderr
    assert "2 entries, 0 changed, 0 failed" in result.stdout
    assert mode(tree) == 0o2775


def test_normalize_reports_what_it_cannot_change(helper, workdir):
    tree = workdir / "mixed"
    tree.mkdir()
    (tree / "mine").write_text("m")
    (tree / "roots").write_text("r")  # stays root-owned: chmod is refused
    os.chown(tree, FLASHPODS_UID, FLASHPODS_UID)
    os.chown(tree / "mine", FLASHPODS_UID, FLASHPODS_UID)
    (tree / "mine").chmod(0o400)
    (tree / "roots").chmod(0o400)

    result = as_flashpods(helper, ["--normalize", str(tree)], workdir)

    assert result.returncode == 1
    assert "1 failed" in result.stdout
    assert "cannot chmod" in result.stderr and "roots" in result.stderr
    assert mode(tree / "mine") == 0o660
    assert mode(tree / "roots") == 0o400


def test_normalize_refuses_a_symlink_argument(helper, workdir):
    target = workdir / "target"
    target.mkdir()
    os.chown(target, FLASHPODS_UID, FLASHPODS_UID)
    target.chmod(0o700)
    link = workdir / "link"
    os.symlink(target, link)

    result = as_flashpods(helper, ["--normalize", str(link)], workdir)

    assert result.returncode == 1
    assert "is a symlink; not followed" in result.stderr
    assert mode(target) == 0o700


def test_normalize_needs_a_directory(helper, workdir):
    result = as_flashpods(helper, ["--normalize"], workdir)

    assert result.returncode == 125
    assert "--normalize needs at least one directory" in result.stderr


def test_normalize_descends_into_a_directory_it_cannot_chmod(helper, workdir):
    # A root-owned 0755 directory cannot get g+w from flashpods, but it can
    # still be read: the flashpods-owned files inside are fixed anyway.
    tree = workdir / "t"
    tree.mkdir()
    os.chown(tree, FLASHPODS_UID, FLASHPODS_UID)
    foreign = tree / "foreign"
    foreign.mkdir(mode=0o755)
    (foreign / "mine").write_text("m")
    os.chown(foreign / "mine", FLASHPODS_UID, FLASHPODS_UID)
    (foreign / "mine").chmod(0o400)

    result = as_flashpods(helper, ["--normalize", str(tree)], workdir)

    assert result.returncode == 1
    assert f"cannot chmod {foreign}" in result.stderr
    assert mode(foreign / "mine") == 0o660
