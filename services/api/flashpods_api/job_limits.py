"""Per-job memory, pids, disk-byte and inode limits, and the host's disk reserve.

Podman hands --memory and --pids-limit to the kernel where it can (cgroup v2, or rootful
cgroup v1); rootless Podman on cgroup v1 ignores both, and nothing in Podman bounds what
a job stores in its bind-mounted /workspace and /artifacts. So the reaper measures every
running job itself, on every cgroup version (docs/security.md, "Per-job limits"):

- processes and memory: job_processes (a thread polling /proc every 0.2 s);
- bytes, inodes and depth: job_disk (a thread walking /workspace and /artifacts);
- the host's disk: job_disk.DiskGuard, with a ballast file beside the database that is
  given back when the disk fills (docs/security.md, "A full disk").

A job over a limit gets a stop reason from REASONS, is killed at once, and finish() turns
the reason into an error that names the limit (error_for).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any

from . import logs
from .config import Config
from .job_disk import MAX_DEPTH, DiskGuard, DiskUsage, DiskWalker, disk_usage
from .job_processes import ProcessWatcher

log = logging.getLogger(__name__)

MIB = 1024 * 1024

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


# -- the reaper's side ------------------------------------------------------------


class Enforcer:
    """Called by the reaper: begin_tick() first, check() for every running job."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.config: Config = engine.config
        self.store = engine.store
        self.guard = DiskGuard(self.config)
        self.processes = ProcessWatcher(
            lambda job_id: engine.signal(job_id, "KILL"), self._process_limits, self.config.logs_dir
        )
        self.walker = DiskWalker(
            lambda job_id: [engine.files.workspace(job_id), engine.files.artifacts(job_id)]
        )

    def start(self) -> None:
        """The watcher and walker threads: started by the reaper's service loop only."""
        self.processes.start()
        self.walker.start()

    def _process_limits(self, job_id: str) -> tuple[int, int]:
        """(tasks, anonymous bytes) a job may use, read from the database (by the watcher
        thread, on its own connection); the host's defaults when that fails."""
        try:
            job = self.store.get_job(job_id)
        except Exception as exc:  # noqa: BLE001 - the defaults still hold it
            log.warning("could not read the limits of %s: %s", job_id, exc)
            job = None
        limits = for_job(self.config, job["resources"] if job else None)
        return limits.pids, limits.memory_mb * MIB

    def begin_tick(self) -> None:
        """Before the tick's first database write: make room if the disk is full.

        The writer is killed before the ballast is given back: a job still writing would
        otherwise take the freed space itself, and the database would stay full.
        """
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
        largest: dict[str, Any] | None = None
        most = -1
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
        roots = [self.engine.files.workspace(job["id"]), self.engine.files.artifacts(job["id"])]
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
        limits = for_job(self.config, job["resources"])
        return self.processes.watch(job["id"], pid, (limits.pids, limits.memory_mb * MIB))

    def _over_log(self, job: dict[str, Any]) -> str | None:
        stored = self._log_stored(job["id"])
        return "log_disk" if stored > 2 * self.config.limits["log_bytes"] else None

    def _over_disk(self, job: dict[str, Any]) -> str | None:
        limits = for_job(self.config, job["resources"])
        usage = self.walker.watch(job["id"], limits.disk_bytes, limits.inodes)
        if usage is None:
            return None
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
    doomed = [engine.files.workspace(job["id"])]
    if reason == "disk_full":
        doomed.append(engine.files.artifacts(job["id"]))
    for path in doomed:
        try:
            engine.files.remove_tree(path)
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
        return bool(runtime.oom_killed(job_id))
    except Exception as exc:  # noqa: BLE001 - unknown: the exit code is still recorded
        log.warning("could not ask podman whether %s was OOM-killed: %s", job_id, exc)
        return False
