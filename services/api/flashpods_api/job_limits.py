"""Per-job memory, pids, disk-byte and inode limits, and the host's disk reserve.

Podman hands --memory and --pids-limit to the kernel where it can (cgroup v2, or rootful
cgroup v1); rootless Podman on cgroup v1 ignores both, and nothing in Podman bounds what
a job stores in its bind-mounted /workspace and /artifacts. So the reaper measures every
running job itself, on every cgroup version (docs/security.md, "Per-job limits"):

- processes and memory: the tree under the container's init, from /proc/<pid>/stat and
  /statm (world-readable: no ptrace right over the job's uid is needed);
- bytes and inodes: a walk of /workspace and /artifacts on directory fds that never
  follows a link and stops as soon as a limit is passed;
- the host's disk: free space on each state filesystem, and a ballast file beside the
  database that is given back when the disk fills, so SQLite always has room to record
  what happened (docs/security.md, "A full disk").

A job over a limit gets a stop reason from REASONS, is killed at once, and finish() turns
the reason into an error that names the limit (error_for).
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import ids, logs
from .config import Config
from .errors import ApiError

log = logging.getLogger(__name__)

MIB = 1024 * 1024
# Deeper trees are a limit of their own: the walk holds one directory fd per level.
MAX_DEPTH = 256
# The walker thread rests this long between rounds over the running jobs' trees.
DISK_CHECK_EVERY_S = 2.0
# The process watcher's period (memory and pids); one /proc scan costs ~10 ms per 100
# processes here, so ~5% of one core at most on a busy host.
PROC_POLL_S = 0.2
BALLAST_NAME = "disk-reserve.ballast"

REASONS = (
    "memory_limit",
    "pids_limit",
    "disk_limit",
    "inode_limit",
    "depth_limit",
    "disk_full",
    "log_disk",
)
# A job stopped for one of these had its workspace removed before anything was recorded.
DISK_REASONS = ("disk_limit", "inode_limit", "depth_limit", "disk_full")


@dataclass(frozen=True)
class Limits:
    memory_mb: int
    pids: int
    disk_bytes: int
    inodes: int


def for_job(config: Config, resources: dict[str, Any] | None) -> Limits:
    """The host's defaults, lowered by what the job asked for (validate refuses higher)."""
    host = config.limits
    asked = resources or {}
    return Limits(
        memory_mb=int(asked.get("memory", host["job_memory_mb"])),
        pids=int(asked.get("pids", host["job_pids"])),
        disk_bytes=int(host["job_disk_bytes"]),
        inodes=int(host["job_inodes"]),
    )


def container_resources(config: Config, job: dict[str, Any]) -> dict[str, Any]:
    """What `podman run` is given: the job's resources with the host's defaults filled in."""
    limits = for_job(config, job.get("resources"))
    return {**(job.get("resources") or {}), "memory": limits.memory_mb, "pids": limits.pids}


# -- processes and memory, from /proc -----------------------------------------


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


# -- bytes and inodes, from a walk ----------------------------------------------


@dataclass
class DiskUsage:
    bytes: int = 0
    inodes: int = 0
    too_deep: bool = False


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def disk_usage(roots: list[Path], max_bytes: int, max_inodes: int) -> DiskUsage:
    """Blocks and entries beneath `roots`, stopping once either limit is passed.

    Iterative, on directory fds opened with O_NOFOLLOW beneath their parent: a job that
    swaps a directory for a link mid-walk is never followed out of its tree, and a deep
    tree costs one fd per level up to MAX_DEPTH (then `too_deep`, itself a limit). Bytes
    are allocated blocks, so a sparse file counts what it really stores; a file with
    several links counts once.
    """
    usage = DiskUsage()
    seen: set[tuple[int, int]] = set()
    for root in roots:
        try:
            top = os.open(root, _DIR_FLAGS)
        except OSError:
            continue  # not there (yet, or any more)
        stack = [(top, os.scandir(top))]
        try:
            while stack:
                fd, listing = stack[-1]
                try:
                    entry = next(listing, None)
                except OSError:
                    entry = None  # removed while we read it: nothing more to count
                if entry is None:
                    listing.close()
                    os.close(fd)
                    stack.pop()
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                usage.inodes += 1
                if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                    if (st.st_dev, st.st_ino) in seen:
                        continue
                    seen.add((st.st_dev, st.st_ino))
                usage.bytes += st.st_blocks * 512
                if usage.bytes > max_bytes or usage.inodes > max_inodes:
                    return usage
                if stat.S_ISDIR(st.st_mode):
                    if len(stack) >= MAX_DEPTH:
                        usage.too_deep = True
                        return usage
                    try:
                        child = os.open(entry.name, _DIR_FLAGS, dir_fd=fd)
                    except OSError:
                        continue  # replaced by a link or removed since the listing
                    stack.append((child, os.scandir(child)))
        finally:
            for fd, listing in stack:
                listing.close()
                os.close(fd)
    return usage


class DiskWalker:
    """Walks the running jobs' trees in a thread of its own, one round every few seconds.

    A walk costs ~20-40 us per entry (measured here): a job at the default inode limit
    takes seconds, which inside the reaper's tick would hold up every other job's
    timeout, log cap and start. The tick only reads the latest result per job.
    """

    def __init__(self, roots_of: Callable[[str], list[Path]]) -> None:
        self._roots_of = roots_of
        self._lock = threading.Lock()
        self._wanted: dict[str, tuple[int, int]] = {}  # job id -> (max bytes, max inodes)
        self._results: dict[str, DiskUsage] = {}
        self._thread: threading.Thread | None = None

    def watch(self, job_id: str, limits: Limits) -> DiskUsage | None:
        """Keep walking this job's trees; returns the latest complete walk, if any."""
        with self._lock:
            self._wanted[job_id] = (limits.disk_bytes, limits.inodes)
            result = self._results.get(job_id)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="disk-walker", daemon=True)
            self._thread.start()
        return result

    def forget(self, job_id: str) -> None:
        with self._lock:
            self._wanted.pop(job_id, None)
            self._results.pop(job_id, None)

    def _run(self) -> None:
        while True:
            with self._lock:
                round_ = list(self._wanted.items())
            for job_id, (max_bytes, max_inodes) in round_:
                try:
                    usage = disk_usage(self._roots_of(job_id), max_bytes, max_inodes)
                except Exception:  # noqa: BLE001 - one tree must not end the walks
                    log.exception("walking the files of %s failed", job_id)
                    continue
                with self._lock:
                    if job_id in self._wanted:
                        self._results[job_id] = usage
            time.sleep(DISK_CHECK_EVERY_S)


class ProcessWatcher:
    """Polls the running jobs' process trees every PROC_POLL_S in a thread of its own.

    Memory is the limit where polling speed matters: measured here, a Python loop
    allocating 64 MiB blocks reached 1.3-1.5 GiB before a kill decided on the reaper's
    1 s tick, and 0.25-0.3 GiB with a 0.2 s poll. So this thread decides and kills at
    once (Podman, no database), and the tick records why (`verdict`).
    """

    def __init__(
        self, kill: Callable[[str], None], limits_of: Callable[[str], Limits], logs_dir: Path
    ) -> None:
        self._kill = kill
        # A container the tick has not seen yet is found in /proc (its conmon) and its
        # limits read from the database here: a job that allocates from its first
        # instant is not left alone until the next tick (measured: 0.4-1.9 GiB under a
        # 64 MiB limit when only the tick registered jobs).
        self._limits_of = limits_of
        self._found_limits: dict[str, Limits] = {}
        self._logs_dir = logs_dir
        self._lock = threading.Lock()
        self._wanted: dict[str, tuple[int, Limits]] = {}  # job id -> (init pid, limits)
        self._verdicts: dict[str, str] = {}
        self._missing: set[str] = set()
        self._blind_warned = False
        self._thread: threading.Thread | None = None

    def watch(self, job_id: str, pid: int, limits: Limits) -> str | None:
        """Keep polling this job; returns its verdict (a reason from REASONS), if any."""
        with self._lock:
            self._wanted[job_id] = (pid, limits)
            verdict = self._verdicts.get(job_id)
        self.start()
        return verdict

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
            reason = None
            if tasks > limits.pids:
                reason = "pids_limit"
            elif anon > limits.memory_mb * MIB:
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


# -- the host's disk --------------------------------------------------------------


class DiskGuard:
    """Free space on the state filesystems, and the ballast that keeps SQLite writable.

    Below `limits.disk_reserve_bytes` free, POST /jobs is refused. The ballast (half the
    reserve, allocated beside the database) is unlinked when a filesystem is nearly full
    (a quarter of the reserve left), which gives the database and the reaper room to
    record the end of the job that filled it; it is allocated again once the reserve
    and the ballast fit.
    """

    def __init__(self, config: Config) -> None:
        self.reserve = int(config.limits["disk_reserve_bytes"])
        self.ballast_bytes = self.reserve // 2
        self.critical = self.reserve // 4
        db_dir = Path(config.db_path).parent
        self.ballast = db_dir / BALLAST_NAME
        self.dirs = [db_dir, config.workspaces_dir, config.artifacts_dir, config.logs_dir]

    def free(self) -> int:
        """The least space an unprivileged writer has left on any state filesystem."""
        free = None
        for path in self.dirs:
            try:
                st = os.statvfs(path)
            except OSError:
                continue
            avail = st.f_bavail * st.f_frsize
            free = avail if free is None else min(free, avail)
        return free if free is not None else 0

    def refuse_if_low(self) -> None:
        free = self.free()
        if free < self.reserve:
            raise ApiError(
                507,
                "disk_low",
                f"The host's disk has {free} bytes free, below its reserve of {self.reserve} "
                "bytes (limits.disk_reserve_bytes); no new job is accepted until finished "
                "jobs' files expire or the operator frees space. Retry later.",
            )

    def give_back(self) -> bool:
        """Unlink the ballast; True if there was one."""
        try:
            self.ballast.unlink()
        except FileNotFoundError:
            return False
        log.warning("disk nearly full: released the %d-byte ballast", self.ballast_bytes)
        return True

    def replenish(self, free: int) -> None:
        if self.ballast.exists() or free < self.reserve + self.ballast_bytes:
            return
        tmp = self.ballast.with_name(BALLAST_NAME + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                # Real blocks, not a sparse file: the space must be ours to give back.
                os.posix_fallocate(fd, 0, self.ballast_bytes)
            finally:
                os.close(fd)
            os.rename(tmp, self.ballast)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            log.warning("could not allocate the disk ballast %s: %s", self.ballast, exc)


# -- the reaper's side ------------------------------------------------------------


class Enforcer:
    """Called by the reaper: begin_tick() first, check() for every running job."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.config: Config = engine.config
        self.store = engine.store
        self.guard = DiskGuard(self.config)
        self.processes = ProcessWatcher(
            lambda job_id: engine.signal(job_id, "KILL"), self._limits_of, self.config.logs_dir
        )
        self.walker = DiskWalker(
            lambda job_id: [engine.workspace(job_id), engine.artifacts(job_id)]
        )

    def _limits_of(self, job_id: str) -> Limits:
        """A job's limits, read from the database (by the watcher thread, on its own
        connection); the host's defaults when that fails."""
        try:
            job = self.store.get_job(job_id)
        except Exception as exc:  # noqa: BLE001 - the defaults still hold it
            log.warning("could not read the limits of %s: %s", job_id, exc)
            job = None
        return for_job(self.config, job["resources"] if job else None)

    def begin_tick(self) -> None:
        """Before the tick's first database write: make room if the disk is full.

        The writer is killed before the ballast is given back: a job still writing would
        otherwise take the freed space itself, and the database would stay full.
        """
        self.processes.start()
        free = self.guard.free()
        if free >= self.guard.critical:
            self.guard.replenish(free)
            return
        writer = self._largest_writer(free)
        if writer is not None:
            self.engine.signal(writer["id"], "KILL")  # Podman's own storage is elsewhere
        self.guard.give_back()
        if writer is not None:
            self._stop(writer["id"], "disk_full", killed=True)

    def _largest_writer(self, free: int) -> dict[str, Any] | None:
        """The running job that stores the most, if killing it frees a useful amount.

        A disk filled by something else than jobs is the operator's to fix: killing jobs
        that store next to nothing would not help, so none is killed then.
        """
        largest, most = None, -1
        for job in self.store.jobs_in(("running",)):  # a read: works on a full disk
            if job["stop_reason"] == "disk_full":
                return None  # already on its way out; its finish frees the space
            used = self._stored(job).bytes + self._log_stored(job["id"])
            if used > most:
                largest, most = job, used
        if largest is None or most < self.guard.critical:
            log.warning(
                "disk nearly full (%d bytes free) and no running job stores %d bytes or more",
                free,
                self.guard.critical,
            )
            return None
        log.warning("disk nearly full: killing %s, which stores %d bytes", largest["id"], most)
        return largest

    def _log_stored(self, job_id: str) -> int:
        try:
            st = os.stat(logs.ctr_log_path(self.config.logs_dir, job_id))
        except OSError:
            return 0
        return max(st.st_size, st.st_blocks * 512)

    def _stored(self, job: dict[str, Any]) -> DiskUsage:
        limits = for_job(self.config, job["resources"])
        roots = [self.engine.workspace(job["id"]), self.engine.artifacts(job["id"])]
        return disk_usage(roots, limits.disk_bytes, limits.inodes)

    def check(self, job: dict[str, Any], container: dict[str, Any] | None) -> bool:
        """Stop a running job that is over one of its limits; True if it was just stopped."""
        if job["stop_reason"] is not None or container is None:
            return False
        killed = self._over_processes(job, container)
        reason = killed or self._over_log(job) or self._over_disk(job)
        if not reason:
            return False
        log.warning("job %s is over its %s", job["id"], reason.replace("_", " "))
        self._stop(job["id"], reason, killed=bool(killed))
        return True

    def settle(self, job: dict[str, Any]) -> dict[str, Any]:
        """Before finish(): record a verdict the watcher killed the job for (the tick may
        see the container exited before it saw the verdict); returns the job's row."""
        reason = self.processes.verdict(job["id"])
        if reason is None or job["stop_reason"] is not None:
            return job
        self._stop(job["id"], reason, killed=True)
        return self.store.get_job(job["id"]) or job

    def forget(self, job_id: str) -> None:
        self.walker.forget(job_id)
        self.processes.forget(job_id)

    def _stop(self, job_id: str, reason: str, killed: bool = False) -> None:
        now = time.time()
        self.store.transition(
            job_id,
            ("running",),
            stop_requested_at=now,
            stop_reason=reason,
            kill_sent_at=now if killed else None,
        )

    def _over_processes(self, job: dict[str, Any], container: dict[str, Any]) -> str | None:
        pid = container.get("Pid")
        if not isinstance(pid, int) or pid <= 0:
            return None
        return self.processes.watch(job["id"], pid, for_job(self.config, job["resources"]))

    def _over_log(self, job: dict[str, Any]) -> str | None:
        stored = self._log_stored(job["id"])
        return "log_disk" if stored > 2 * self.config.limits["log_bytes"] else None

    def _over_disk(self, job: dict[str, Any]) -> str | None:
        usage = self.walker.watch(job["id"], for_job(self.config, job["resources"]))
        if usage is None:
            return None
        limits = for_job(self.config, job["resources"])
        if usage.too_deep:
            return "depth_limit"
        if usage.bytes > limits.disk_bytes:
            return "disk_limit"
        if usage.inodes > limits.inodes:
            return "inode_limit"
        return None


# -- finish()'s side --------------------------------------------------------------


def clear_before_finish(engine: Any, job: dict[str, Any]) -> dict[str, Any] | None:
    """Free the disk before the steps of finish() that need it, when the disk is the issue.

    A job stopped for a disk limit, or any job ending while the host is below its reserve,
    has its workspace removed first (and, for a full disk, its artifacts): its changes
    are not recorded, and the returned summary says why.
    """
    reason = job.get("stop_reason")
    low = DiskGuard(engine.config).free() < engine.config.limits["disk_reserve_bytes"]
    if reason not in DISK_REASONS and not low:
        return None
    doomed = [engine.workspace(job["id"])]
    if reason == "disk_full":
        doomed.append(engine.artifacts(job["id"]))
    for path in doomed:
        try:
            engine.remove_tree(path)
        except Exception as exc:  # noqa: BLE001 - the retention sweep retries; the end is recorded
            log.warning("could not remove %s: %s", path, exc)
    why = "it went over a disk limit" if reason in DISK_REASONS else "the host's disk was low"
    return {"error": f"workspace changes were not recorded: {why}, so the workspace was removed"}


def error_for(reason: str, job: dict[str, Any], config: Config) -> str:
    """The job's error sentence for a stop reason from REASONS: which limit, what to do."""
    limits = for_job(config, job.get("resources"))
    host = config.limits
    if reason == "memory_limit":
        return (
            f"The job used more than {limits.memory_mb} MiB of memory (its memory limit) and "
            "was killed; use less memory, or ask for more with resources.memory up to "
            f"{host['job_memory_mb']} MiB (this host's limits.job_memory_mb)."
        )
    if reason == "pids_limit":
        return (
            f"The job ran more than {limits.pids} processes and threads (its pids limit) and "
            "was killed; start fewer at once, or ask for more with resources.pids up to "
            f"{host['job_pids']} (this host's limits.job_pids)."
        )
    if reason == "disk_limit":
        return (
            f"The job stored more than {limits.disk_bytes} bytes in /workspace and /artifacts "
            "(its disk limit, limits.job_disk_bytes) and was killed; its workspace was "
            "removed. Keep less data there."
        )
    if reason == "inode_limit":
        return (
            f"The job created more than {limits.inodes} files and directories in /workspace "
            "and /artifacts (its inode limit, limits.job_inodes) and was killed; its "
            "workspace was removed. Create fewer files (an archive holds many in one)."
        )
    if reason == "depth_limit":
        return (
            f"The job nested directories more than {MAX_DEPTH} levels deep in /workspace or "
            "/artifacts (the depth limit) and was killed; its workspace was removed."
        )
    if reason == "disk_full":
        return (
            "The host's disk filled up while this job stored the most data on it, so it was "
            "killed and its workspace and artifacts were removed to free the space; retry "
            "with less data, or when the host has room."
        )
    cap = host["log_bytes"]
    return (
        f"The job's output took more than {2 * cap} bytes stored on disk (twice the log "
        f"cap of {cap} bytes; Podman stores each line with a ~40-byte header, so many short "
        "lines cost more than their text) and was killed; write large output to /artifacts."
    )


def oom_killed(runtime: Any, job_id: str) -> bool:
    """Whether the kernel's OOM killer ended the container (cgroup v2 enforces --memory)."""
    try:
        return runtime.oom_killed(job_id)
    except Exception as exc:  # noqa: BLE001 - unknown: the exit code is still recorded
        log.warning("could not ask podman whether %s was OOM-killed: %s", job_id, exc)
        return False
