"""A dev host's root goes even when a job left a tree deeper than Python's recursion."""

from __future__ import annotations

import os
import subprocess
import sys

from flashpods_devhost import host


def test_a_tree_deeper_than_the_recursion_limit_is_removed(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(sys.getrecursionlimit() + 200):  # by fd: no path grows past PATH_MAX
            os.mkdir("d", dir_fd=fd)
            child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        leaf = os.open("leaf", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd)
        os.close(leaf)
    finally:
        os.close(fd)
    try:
        host._remove_tree(root)
        assert not root.exists()
    finally:
        # Never leave it to pytest's own clean-up of old temp dirs: that recurses too.
        subprocess.run(["rm", "-rf", "--", str(root)], check=False)
