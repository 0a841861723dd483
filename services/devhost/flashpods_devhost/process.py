"""Starting and stopping one service process: its user, network namespace and log file."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .accounts import Account

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def as_user(
    argv: Sequence[str],
    account: Account,
    *,
    switch: bool,
    netns: str | None = None,
    ambient_caps: Sequence[str] = (),
) -> list[str]:
    """The command line that runs argv as `account`, inside `netns` when given.

    `nsenter --net` (not `ip netns exec`, which remounts /sys and breaks Podman's and
    nft's cgroup paths) runs first, as root, then setpriv drops to the account.
    """
    prefix: list[str] = []
    if netns:
        prefix += ["nsenter", f"--net=/run/netns/{netns}", "--"]
    if switch:
        prefix += [
            "setpriv",
            f"--reuid={account.uid}",
            f"--regid={account.gid}",
            "--init-groups",
        ]
        if ambient_caps:
            caps = ",".join(f"+{cap}" for cap in ambient_caps)
            prefix += [f"--inh-caps={caps}", f"--ambient-caps={caps}"]
        prefix += ["--"]
    return prefix + list(argv)


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class Service:
    """One long-running process in its own process group, output appended to a log file."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    cwd: Path
    umask: int = 0o027
    stop_timeout_s: float = 10.0
    process: subprocess.Popen | None = field(default=None, repr=False)

    def start(self) -> None:
        if self.process is not None and self.running:
            raise RuntimeError(f"{self.name} is already running (pid {self.process.pid})")
        with open(self.log_path, "ab") as log:
            log.write(f"--- {time.strftime('%F %T')} starting {' '.join(self.argv)}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,  # own process group: stop() reaches gunicorn's workers too
                umask=self.umask,
            )

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with status {self.process.returncode}; "
                f"last lines of {self.log_path}:\n{tail(self.log_path)}"
            )

    def kill(self, sig: int) -> None:
        """Signal the whole process group (what a crash or an OOM kill would do)."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)
        if sig == signal.SIGKILL:
            self.process.wait()

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.kill(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=self.stop_timeout_s)
        # Stragglers (gunicorn workers, children) are killed with the group either way.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
