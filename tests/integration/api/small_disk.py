"""A small tmpfs that both the dev host's services and its rootless Podman see.

Rootless Podman runs every container from the mount namespace of its per-user pause
process. Mounts here are private (no propagation), so a tmpfs mounted after that
process started is invisible to Podman: `podman run` could not find the job's workspace.
The same tmpfs (one superblock, so one "disk") is therefore also attached inside the
pause process's namespace, with open_tree(OPEN_TREE_CLONE) + move_mount, from a child
process (setns into a mount namespace needs a single-threaded caller). Needs root.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

PODMAN_USER = "flashpods"

_ATTACH = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
SYS_open_tree, SYS_move_mount = 428, 429  # the same number on every architecture
OPEN_TREE_CLONE, OPEN_TREE_CLOEXEC, CLONE_NEWNS, MOVE_MOUNT_F_EMPTY_PATH = 1, 0o2000000, 0x20000, 4
AT_FDCWD = -100
path, pid = sys.argv[1].encode(), int(sys.argv[2])
tree = libc.syscall(SYS_open_tree, AT_FDCWD, path, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC)
if tree < 0:
    raise OSError(ctypes.get_errno(), "open_tree")
ns = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY)
if libc.setns(ns, CLONE_NEWNS) != 0:
    raise OSError(ctypes.get_errno(), "setns")
if libc.syscall(SYS_move_mount, tree, b"", AT_FDCWD, path, MOVE_MOUNT_F_EMPTY_PATH) != 0:
    raise OSError(ctypes.get_errno(), "move_mount")
"""


def _pause_pid() -> int:
    """The flashpods user's rootless pause process (started now if there is none)."""
    user = pwd.getpwnam(PODMAN_USER)
    runtime = f"/run/user/{user.pw_uid}"
    env = {"PATH": os.environ["PATH"], "HOME": user.pw_dir, "XDG_RUNTIME_DIR": runtime}
    subprocess.run(
        ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups", "--",
         "podman", "unshare", "true"],
        check=True, env=env, capture_output=True, timeout=60,
    )  # fmt: skip
    return int(Path(runtime, "libpod/tmp/pause.pid").read_text())


@contextlib.contextmanager
def mounted(mount: Path, size: int) -> Iterator[Path]:
    """A tmpfs of `size` bytes at `mount`, seen by this host's processes and Podman alike."""
    mount.mkdir(mode=0o755)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(mount)], check=True
    )
    pid = None
    try:
        pid = _pause_pid()
        # Already there when the pause process was started after the mount (a copy of ours).
        if os.stat(f"/proc/{pid}/root{mount}").st_dev != os.stat(mount).st_dev:
            subprocess.run([sys.executable, "-c", _ATTACH, str(mount), str(pid)], check=True)
        yield mount
    finally:
        if pid is not None:
            subprocess.run(["nsenter", "-t", str(pid), "-m", "umount", "-l", str(mount)])
        subprocess.run(["umount", "-l", str(mount)], check=False)
        mount.rmdir()
