"""jobtree: walking and removing job-owned trees of any depth, never through a link."""

from __future__ import annotations

import errno
import os
import resource
from pathlib import Path

import pytest
from flashpods_api import jobtree


@pytest.fixture
def tmp_path(tmp_path):
    """pytest removes tmp_path with shutil.rmtree, which recurses: take deep trees first."""
    yield tmp_path
    for child in tmp_path.iterdir():
        assert jobtree.remove(child, budget_s=300).done


def _chain(root: Path, depth: int, leaf: str = "leaf.txt") -> None:
    """`depth` nested directories `d` under root (built with dir fds: paths get too long)."""
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            nxt = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nxt
        wfd = os.open(leaf, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(wfd, b"x")
        os.close(wfd)
    finally:
        os.close(fd)


def test_the_old_walks_fail_on_such_a_tree(tmp_path):
    """What the module replaces: os.fwalk and shutil.rmtree recurse once per level."""
    _chain(tmp_path / "t", 1100)
    with pytest.raises((RecursionError, OSError)):
        for _ in os.fwalk(tmp_path / "t"):
            pass


def test_walk_stops_at_the_depth_limit_and_says_so(tmp_path):
    _chain(tmp_path / "t", 1100)
    nodes = list(jobtree.walk(tmp_path / "t", max_depth=50))
    limited = [n for n in nodes if n.limit]
    assert len(limited) == 1 and "deeper than 50 levels" in limited[0].limit
    assert limited[0].rel == "/".join(["d"] * 50)
    assert not any(n.rel.endswith("leaf.txt") for n in nodes)


def test_walk_stops_at_the_entry_limit(tmp_path):
    root = tmp_path / "t"
    root.mkdir()
    for i in range(30):
        (root / f"f{i:02}").write_text("x")
    nodes = list(jobtree.walk(root, max_entries=10))
    assert len(nodes) == 11 and "more than 10 entries" in nodes[-1].limit


def test_walk_order_links_and_unreadable_dirs(tmp_path):
    root = tmp_path / "t"
    (root / "b").mkdir(parents=True)
    (root / "a.txt").write_text("a")
    (root / "b" / "c.txt").write_text("cc")
    (root / "link").symlink_to("/etc")
    (root / "z").mkdir()
    nodes = list(jobtree.walk(root, read_links=True))
    assert [n.rel for n in nodes] == ["a.txt", "b", "link", "z", "b/c.txt"]
    assert nodes[2].link == "/etc"
    assert jobtree.measure(root).bytes == sum(n.st.st_size for n in nodes)


def test_a_root_that_is_a_link_is_not_followed(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "secret").write_text("s")
    (tmp_path / "t").symlink_to(tmp_path / "real")
    nodes = list(jobtree.walk(tmp_path / "t"))
    assert len(nodes) == 1 and nodes[0].error
    assert list(jobtree.walk(tmp_path / "missing")) == []
    assert jobtree.remove(tmp_path / "t").done
    assert not (tmp_path / "t").is_symlink() and (tmp_path / "real" / "secret").exists()


@pytest.mark.parametrize("depth", [1100, 5000])
def test_remove_takes_a_chain_of_any_depth_with_few_fds(tmp_path, depth):
    _chain(tmp_path / "t", depth)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))  # far below the depth
    try:
        result = jobtree.remove(tmp_path / "t", budget_s=300)  # a slow disk
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert result.done, result
    assert not (tmp_path / "t").exists()


def test_remove_never_follows_links_inside(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("k")
    root = tmp_path / "t"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "out").symlink_to(outside)
    (root / "a" / "file").symlink_to(outside / "keep")
    assert jobtree.remove(root).done
    assert (outside / "keep").read_text() == "k"


def test_remove_resumes_after_its_budget(tmp_path):
    _chain(tmp_path / "t", 300)
    first = jobtree.remove(tmp_path / "t", budget_s=0.0)
    assert not first.done and "budget" in first.error
    assert jobtree.remove(tmp_path / "t").done


def test_walk_stops_at_the_path_names_budget(tmp_path, monkeypatch):
    monkeypatch.setattr(jobtree, "MAX_NAMES_BYTES", 100)
    root = tmp_path / "t"
    root.mkdir()
    for i in range(30):
        (root / f"file-{i:02}").write_text("x")
    nodes = list(jobtree.walk(root))
    assert "MiB of path names" in nodes[-1].limit and len(nodes) < 30


def test_openat2_refuses_to_leave_the_root(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "outside.txt").write_text("secret")
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(OSError) as caught:
            jobtree.openat2(root_fd, "../outside.txt", os.O_RDONLY)
        assert caught.value.errno == errno.EXDEV
    finally:
        os.close(root_fd)
