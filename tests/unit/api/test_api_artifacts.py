"""artifacts.py: only regular files beneath the job's artifacts dir are served."""

from __future__ import annotations

import os

import pytest
from flashpods_api import artifacts, jobtree


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "art"
    (root / "d").mkdir(parents=True)
    (root / "d" / "f.txt").write_text("inside")
    (tmp_path / "outside.txt").write_text("secret")
    os.symlink(tmp_path / "outside.txt", root / "abs")
    os.symlink("../outside.txt", root / "rel")
    os.symlink(tmp_path, root / "up")
    os.mkfifo(root / "fifo")
    return root


@pytest.mark.parametrize("use_openat2", [True, False])
def test_open_beneath_serves_regular_files_only(tree, use_openat2, monkeypatch):
    monkeypatch.setattr(jobtree, "_have_openat2", use_openat2)
    fd = artifacts.open_beneath(tree, "d/f.txt")
    assert os.read(fd, 100) == b"inside"
    os.close(fd)
    for path, reason in (
        ("abs", "symlink"),
        ("rel", "symlink"),
        ("up/outside.txt", "symlink"),
        ("fifo", "fifo"),
    ):
        with pytest.raises(artifacts.NotServed) as caught:
            artifacts.open_beneath(tree, path)
        assert caught.value.reason == reason, path
    with pytest.raises(artifacts.NotServed, match="missing"):
        artifacts.open_beneath(tree, "d/none")
    with pytest.raises(artifacts.NotServed, match="bad path"):
        artifacts.open_beneath(tree, "../outside.txt")


def test_relpath_rules():
    assert artifacts.valid_relpath("a/b.txt")
    for bad in ("", "/a", "a//b", "a/./b", "a/../b", "..", "a\0b", "x" * 5000):
        assert not artifacts.valid_relpath(bad), bad
