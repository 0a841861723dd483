"""A job's processes and memory, read from /proc, and the thread that polls them.

Rootless Podman on cgroup v1 ignores --memory and --pids-limit, so the reaper measures
them itself (docs/security.md, "Per-job limits"): /proc/<pid>/stat and /statm are
world-readable, no ptrace right over the job's uid is needed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from . import ids

log = logging.getLogger(__name__)

# The watcher's period; one /proc scan costs ~10 ms per 100 processes here, so ~5% of
# one core at most on a busy host.
PROC_POLL_S = 0.2


def process_table(
    proc: str = "/proc", conmons: set[int] | None = None
) -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, threads) for every process on the host (one read each).

    With `conmons`, the pids of Podman's conmon processes are added to it.
    """
    table: dict[int, tuple[int, int]] = {}
    for name in os.listdir(proc):
        if not name.isdigit():
            continue
        try:
            with open(f"{proc}/{name}/stat", "rb") as fh:
                raw = fh.read()
        except OSError:
            continue  # exited since the listing
        # The command name may hold spaces and parentheses: fields start after the last ')'.
        end = raw.rfind(b")")
        fields = raw[end + 2 :].split()
        with contextlib.suppress(IndexError, ValueError):
            table[int(name)] = (int(fields[1]), int(fields[17]))
            if conmons is not None and raw[raw.find(b"(") + 1 : end] == b"conmon":
                conmons.add(int(name))
    return table


def job_containers(
    table: dict[int, tuple[int, int]], conmons: set[int], logs_dir: Path, proc: str = "/proc"
) -> dict[str, int]:
    """job id -> container init pid, for this instance's containers, straight from /proc.

    conmon's argv names the container (-n) and its log (--log-path); the log path under
    our logs dir is what tells this instance's containers from any other's. The init is
    conmon's child (conmon is its subreaper).
    """
    found: dict[str, int] = {}
    prefix = f"{logs_dir}/"
    children: dict[int, int] = {}
    for pid, (ppid, _threads) in table.items():
        if ppid in conmons:
            children[ppid] = pid
    for conmon in conmons:
        try:
            with open(f"{proc}/{conmon}/cmdline", "rb") as fh:
                argv = fh.read().decode(errors="replace").split("\0")
            with open(f"{proc}/{conmon}/status", "rb") as fh:
                status = fh.read()
        except OSError:
            continue
        # A job can name one of its own processes "conmon" and forge that argv to get
        # another job killed: a real conmon runs in the host's pid namespace, a job's
        # processes in their container's (NSpid then lists two or more pids).
        nspid = next((ln for ln in status.splitlines() if ln.startswith(b"NSpid:")), b"")
        if len(nspid.split()) != 2:
            continue
        name = _arg(argv, ("-n", "--name"))
        log_path = _arg(argv, ("-l", "--log-path")) or ""
        if not log_path.startswith("/"):
            log_path = log_path.partition(":")[2]  # "-l k8s-file:/path" (Podman 4.3)
        if log_path.startswith(prefix) and name and ids.is_job_id(name) and conmon in children:
            found[name] = children[conmon]
    return found


def _arg(argv: list[str], flags: tuple[str, ...]) -> str | None:
    for i, arg in enumerate(argv[:-1]):
        if arg in flags:
            return argv[i + 1]
    return None


def tree_usage(
    root_pid: int, table: dict[int, tuple[int, int]], proc: str = "/proc"
) -> tuple[int, int]:
    """(tasks, anonymous resident bytes) of root_pid and all its descendants.

    Orphans in a container are re-parented to its init (our root), so the tree is the
    whole container. Tasks count threads, as the pids cgroup does. Memory is each
    process's resident minus file-backed and shared pages (statm), so copy-on-write pages
    shared after a fork count once per process: an estimate that errs towards stopping a
    job early, never late.
    """
    children: dict[int, list[int]] = {}
    for pid, (ppid, _threads) in table.items():
        children.setdefault(ppid, []).append(pid)
    page = os.sysconf("SC_PAGE_SIZE")
    tasks = anon = 0
    pending = [root_pid] if root_pid in table else []
    while pending:
        pid = pending.pop()
        tasks += table[pid][1]
        pending.extend(children.get(pid, ()))
        try:
            with open(f"{proc}/{pid}/statm", "rb") as fh:
                fields = fh.read().split()
            anon += max(0, int(fields[1]) - int(fields[2])) * page
        except (OSError, IndexError, ValueError):
            continue
    return tasks, anon


class ProcessWatcher:
    """Polls the running jobs' process trees every PROC_POLL_S in a thread of its own.

    Memory is the limit where polling speed matters: measured here, a Python loop
    allocating 64 MiB blocks reached 1.3-1.5 GiB before a kill decided on the reaper's
    1 s tick, and 0.25-0.3 GiB with a 0.2 s poll. So this thread decides and kills at
    once (Podman, no database), and the tick records why (`verdict`).
    """

    def __init__(
        self,
        kill: Callable[[str], None],
        limits_of: Callable[[str], tuple[int, int]],
        logs_dir: Path,
    ) -> None:
        self._kill = kill
        # A container the tick has not seen yet is found in /proc (its conmon) and its
        # limits read from the database here: a job that allocates from its first
        # instant is not left alone until the next tick (measured: 0.4-1.9 GiB under a
        # 64 MiB limit when only the tick registered jobs).
        self._limits_of = limits_of
        self._found_limits: dict[str, tuple[int, int]] = {}
        self._logs_dir = logs_dir
        self._lock = threading.Lock()
        # job id -> (init pid, (max tasks, max anonymous bytes))
        self._wanted: dict[str, tuple[int, tuple[int, int]]] = {}
        self._verdicts: dict[str, str] = {}
        self._missing: set[str] = set()
        self._blind_warned = False
        self._thread: threading.Thread | None = None

    def watch(self, job_id: str, pid: int, limits: tuple[int, int]) -> str | None:
        """Keep polling this job; returns its verdict (a reason from REASONS), if any."""
        with self._lock:
            self._wanted[job_id] = (pid, limits)
        if self._thread is None:
            self.poll()  # not started: poll now, in the caller
        return self.verdict(job_id)

    def verdict(self, job_id: str) -> str | None:
        with self._lock:
            return self._verdicts.get(job_id)

    def forget(self, job_id: str) -> None:
        with self._lock:
            self._wanted.pop(job_id, None)
            self._verdicts.pop(job_id, None)
            self._missing.discard(job_id)
            self._found_limits.pop(job_id, None)

    def start(self) -> None:
        """Poll in a thread from now on (the reaper's service; ticks in tests poll inline)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="process-watcher", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - keep polling; the next round may work
                log.exception("polling job processes failed")
            time.sleep(PROC_POLL_S)

    def poll(self) -> None:
        conmons: set[int] = set()
        table = process_table(conmons=conmons)
        found = job_containers(table, conmons, self._logs_dir)
        with self._lock:
            jobs = dict(self._wanted)
            new = [j for j in found if j not in jobs and j not in self._found_limits]
        for job_id in new:
            self._found_limits[job_id] = self._limits_of(job_id)
        with self._lock:
            for job_id, pid in found.items():
                if job_id in self._found_limits:
                    jobs.setdefault(job_id, (pid, self._found_limits[job_id]))
            jobs = {j: w for j, w in jobs.items() if j not in self._verdicts}
        for job_id, (pid, limits) in jobs.items():
            if pid not in table:
                self._unseen(job_id, pid)
                continue
            tasks, anon = tree_usage(pid, table)
            max_tasks, max_anon = limits
            reason = None
            if tasks > max_tasks:
                reason = "pids_limit"
            elif anon > max_anon:
                reason = "memory_limit"
            if reason is None:
                continue
            with self._lock:
                # Kept until the tick forgets the job: it records the reason (settle).
                self._verdicts[job_id] = reason
            log.warning("job %s is over its %s: killing it", job_id, reason.replace("_", " "))
            self._kill(job_id)

    def _unseen(self, job_id: str, pid: int) -> None:
        """A running container's init missing from /proc on two polls in a row.

        Once is a race with its exit; twice means /proc hides other users' processes
        (hidepid, systemd's ProtectProc=invisible): then only the kernel's cgroup limits
        hold, and the operator must hear it.
        """
        if job_id not in self._missing:
            self._missing.add(job_id)
            return
        if not self._blind_warned:
            self._blind_warned = True
            log.warning(
                "cannot see the processes of %s (pid %d) in /proc: memory and pids are not "
                "polled; run the reaper with ProtectProc=default and without hidepid",
                job_id,
                pid,
            )
