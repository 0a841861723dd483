"""Find and remove dev-host roots that crashed test runs left under the test base.

A root is stale only when all of these hold, so a root in use is never touched:
- its name is one the pytest plugin makes (8 hex digits) and it has the layout's etc/,
  but no KEPT_MARKER (FLASHPODS_TEST_KEEP_ROOT=1 kept it on purpose);
- nothing in it changed for `min_age_s` (a concurrent session may be between creating
  the root and starting its services, when no process uses it yet);
- no process has its working directory, root, executable, an open file or a command
  line argument inside it (services run with the root as working directory);
- Podman lists no container, running or not, with its instance label.
When any of this cannot be checked (a process we may not inspect, podman failing), the
root is kept.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

from .host import DevHost, HostSettings

ROOT_NAME = re.compile(r"^[0-9a-f]{8}$")
DEFAULT_MIN_AGE_S = 600.0
KEPT_MARKER = "kept-for-debugging"


def newest_change(root: Path) -> float:
    """The latest mtime of the root, its direct entries and its service logs."""
    stamps = [root.stat().st_mtime]
    for parent in (root, root / "log", root / "etc", root / "run"):
        try:
            entries = list(parent.iterdir())
        except OSError:
            continue
        for entry in entries:
            try:
                stamps.append(entry.lstat().st_mtime)
            except OSError:
                continue
    return max(stamps)


def _proc_refs(pid_dir: Path) -> tuple[list[str], bool]:
    """Paths and arguments a process holds, and whether all of them could be read."""
    refs: list[str] = []
    complete = True
    for link in ("cwd", "root", "exe"):
        try:
            refs.append(os.readlink(pid_dir / link))
        except PermissionError:
            complete = False
        except OSError:
            continue  # exited meanwhile, or a kernel thread without exe
    try:
        refs += (pid_dir / "cmdline").read_bytes().decode(errors="replace").split("\0")
    except PermissionError:
        complete = False
    except OSError:
        return refs, complete
    try:
        fds = list((pid_dir / "fd").iterdir())
    except PermissionError:
        return refs, False
    except OSError:
        return refs, complete
    for fd in fds:
        try:
            refs.append(os.readlink(fd))
        except OSError:
            continue
    return refs, complete


def roots_in_use(roots: list[Path], proc: Path = Path("/proc")) -> set[Path]:
    """The roots some live process refers to.

    Without root, another user's process (the service users') cannot be inspected, so
    every root counts as used. As root, what still cannot be inspected is guarded by
    the kernel or an LSM (e.g. a sandbox's own init), never a service the launcher
    started; its command line is checked when readable.
    """
    used: set[Path] = set()
    for pid_dir in proc.iterdir():
        if not pid_dir.name.isdigit() or pid_dir.name == str(os.getpid()):
            continue
        refs, complete = _proc_refs(pid_dir)
        if not complete and os.geteuid() != 0:
            return set(roots)
        for ref in refs:
            used.update(root for root in roots if str(root) in ref)
    return used


def _instance(root: Path) -> str | None:
    try:
        return json.loads((root / "etc" / "api.json").read_text())["instance"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def has_containers(root: Path, instance: str) -> bool:
    """Whether Podman lists any container of this instance (True when podman fails)."""
    host = DevHost(HostSettings(root=root, instance=instance))
    try:
        listed = host.podman(
            "ps", "-a", "-q", "--filter", f"label=flashpods.instance={instance}",
            timeout=60, in_netns=False,
        )  # fmt: skip
    except Exception:
        return True
    return listed.returncode != 0 or bool(listed.stdout.split())


def stale_roots(
    base: Path,
    min_age_s: float = DEFAULT_MIN_AGE_S,
    containers: Callable[[Path, str], bool] = has_containers,
    proc: Path = Path("/proc"),
) -> list[Path]:
    try:
        candidates = sorted(
            entry
            for entry in base.iterdir()
            if ROOT_NAME.match(entry.name)
            and entry.is_dir()
            and not entry.is_symlink()
            and (entry / "etc").is_dir()
            and not (entry / KEPT_MARKER).exists()
        )
    except FileNotFoundError:
        return []
    now = time.time()
    old = [root for root in candidates if now - newest_change(root) >= min_age_s]
    if not old:
        return []
    used = roots_in_use(old, proc)
    stale = []
    for root in old:
        if root in used:
            continue
        instance = _instance(root)
        if instance is None or containers(root, instance):
            continue
        stale.append(root)
    return stale


def remove_stale_roots(base: Path, min_age_s: float = DEFAULT_MIN_AGE_S) -> list[Path]:
    """Remove every stale root under base; returns what was removed."""
    removed = []
    for root in stale_roots(base, min_age_s):
        instance = _instance(root) or "stale"
        DevHost(HostSettings(root=root, instance=instance))._remove_root()
        if not root.exists():
            removed.append(root)
    return removed
