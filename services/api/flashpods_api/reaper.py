"""The reaper: one process per host that keeps jobs moving and the disk clean.

Every tick it reconciles the database with `podman ps -a` for this instance (adopting
running containers, recording exits, marking vanished ones lost, removing orphans),
enforces timeouts and the log cap, starts queued jobs FIFO under the cap and applies
retention. A file lock makes sure only one reaper runs per database.

One job must never stop the others (issue 14): each job's step runs on its own, an error
there is logged and counted, and after MAX_JOB_FAILURES ticks in a row the job is ended
as `failed` with that error. Each tick records its start (`reaper` heartbeat: alive) and,
when it got through, its end (`reaper_done`: progress); /healthz goes red when ticks keep
starting but none gets through.

A job's end is recorded when it happens (issue 18): the exit watch (exits.py) hands the
reaper the jobs whose live log conmon just closed, and `ended` records each whose
container Podman says has stopped. The tick stays the safety net for every end the
watch did not see (the reaper was down, the kernel dropped events). Both take the job's
own lock and read its row again under it, so a job is finished once.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from . import artifacts, budgets, exits, ids, job_limits, jobtree, logs
from .jobs import Engine
from .runtime import PodmanError
from .store import ACTIVE, FINAL, LIVE

log = logging.getLogger(__name__)

# A 'starting' job with no running container after this long lost its starter to a crash
# (longer than the runtime's timeout on `podman run`).
START_STALE_S = 90.0
RETENTION_EVERY_S = 5.0
# A claimed warm job not handed its command after this long lost its starter to a crash.
WARM_HANDOVER_STALE_S = 2.0
ARTIFACT_CHECK_EVERY_S = 2.0
# Ticks in a row a job's step may fail before the job is ended with that error.
MAX_JOB_FAILURES = 3
# A job at its model budget is told by the proxy first (403 budget_exhausted on its next
# model call); SIGTERM follows after this much of kill_grace_s, so an agent usually ends
# on that refusal and says so in its own summary (the proxy refuses its calls meanwhile).
BUDGET_NOTICE_FRACTION = 0.5


class Reaper:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.store = engine.store
        self.runtime = engine.runtime
        self.config = engine.config
        self.files = engine.files
        self.stop = threading.Event()
        self._wake = threading.Event()  # a tick now: stop, or the exit watch lost events
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self.exit_watch = exits.ExitWatch(self.config.logs_dir, self.ended, self.wake)
        self._decoders: dict[str, logs.Decoder] = {}
        self._artifact_checked: dict[str, float] = {}
        self._last_retention = 0.0
        self._failures: dict[str, int] = {}
        self._tick_failed = True  # until a tick gets through: then its record is written
        self.limits = job_limits.Enforcer(engine)
        # Often enough that no TTL overshoots by more than a quarter, at most every 5 s.
        shortest = min(float(v) for v in self.config.retention.values())
        self._retention_every = min(RETENTION_EVERY_S, shortest / 4)

    def run_forever(self) -> None:
        interval = float(self.config.reaper["interval_s"])
        self.limits.start()
        self.sweep_identities()
        # Watch before the first tick: an end between that tick's listing and the watch
        # would otherwise wait a whole interval.
        self.exit_watch.start()
        # Probe REST or CLI now, not on the first job's end (it cost that end ~0.4 s).
        try:
            self.runtime.uses_rest()
        except PodmanError as exc:
            log.warning("podman probe failed (retried on first use): %s", exc)
        while not self.stop.is_set():
            self._wake.clear()
            try:
                self.tick()
            except PodmanError as exc:
                log.warning("podman unavailable this tick: %s", exc)
                self._record_tick_error(f"podman unavailable: {exc}")
            except Exception as exc:  # noqa: BLE001 - one bad tick must not end the reaper
                log.exception("reaper tick failed")
                self._record_tick_error(f"{type(exc).__name__}: {exc}")
            self._wake.wait(interval)
        self.exit_watch.stop()

    def wake(self) -> None:
        """Tick now (the exit watch lost events, or the reaper is stopping)."""
        self._wake.set()

    def request_stop(self) -> None:
        self.stop.set()
        self._wake.set()

    # -- a job's end, as it happens ---------------------------------------------

    def _job_lock(self, job_id: str) -> threading.Lock:
        with self._locks_guard:
            lock = self._locks.get(job_id)
            if lock is None:
                lock = self._locks[job_id] = threading.Lock()
            return lock

    def _drop_lock(self, job_id: str) -> None:
        with self._locks_guard:
            self._locks.pop(job_id, None)

    def ended(self, job_ids: set[str]) -> None:
        """The exit watch saw these jobs' logs closed: record each that really ended."""
        for job_id in sorted(job_ids):
            try:
                self.finish_if_ended(job_id)
            except PodmanError as exc:
                log.warning("could not check %s's end now (the tick will): %s", job_id, exc)
            except Exception:  # noqa: BLE001 - one job must not stop the others
                log.exception("recording %s's end failed (the tick retries it)", job_id)

    def finish_if_ended(self, job_id: str) -> bool:
        """Record a running job's end if Podman says its container stopped; True if done.

        A close of the log is only a hint (the logs directory is writable by the job
        uid): a container still running, or one Podman does not know, is left to the tick.
        """
        with self._job_lock(job_id):
            job = self.store.get_job(job_id)
            if job is None or job["status"] != "running":
                return False
            state = self.runtime.state(job_id)
            if state is None or state.get("State") not in ("exited", "stopped"):
                return False
            job = self.limits.settle(job)  # a limit's kill may have ended it
            self._forget(job_id)
            self.engine.finish(job, state.get("ExitCode"))
        self._drop_lock(job_id)
        return True

    def _record_tick_error(self, detail: str) -> None:
        """What /healthz names when ticks stop getting through."""
        self._tick_failed = True
        try:
            self.store.record_probe("reaper", False, detail[:500])
        except Exception as exc:  # noqa: BLE001 - the database check reports the cause
            log.warning("could not record the tick's error: %s", exc)

    def sweep_identities(self) -> None:
        """Delete SPIRE entries of jobs that ended while nothing was watching."""
        try:
            live = self.store.jobs_in(LIVE)
            self.engine.registrar.sweep({job["id"] for job in live})
        except Exception as exc:  # noqa: BLE001 - retried at the next start; jobs still end
            log.warning("could not sweep SPIRE entries: %s", exc)

    def tick(self) -> None:
        self.limits.begin_tick()  # before any write: room for the database on a full disk
        self.store.beat("reaper", os.getpid())
        # Jobs first, containers second: a job is 'running' only after its container
        # exists, so a running job missing from the later listing really is gone.
        active = self.store.jobs_in(ACTIVE)
        containers = {name: c for c in self._list_containers() for name in (c.get("Names") or [])}
        active_ids = {job["id"] for job in active}
        for job in active:
            self._guarded(job, containers.get(job["id"]))
        warm_ids = self.engine.warm.reconcile(containers)
        self._remove_orphans(containers, active_ids | warm_ids)
        self.engine.start_next()
        self.engine.warm.refill()
        if time.monotonic() - self._last_retention >= self._retention_every:
            self._last_retention = time.monotonic()
            self.retention()
        self.store.beat("reaper_done", os.getpid())
        if self._tick_failed:  # one write when it changes, not one per tick
            self.store.record_probe("reaper", True, "tick completed")
            self._tick_failed = False

    def _guarded(self, job: dict[str, Any], container: dict[str, Any] | None) -> None:
        """One job's step; its error is its own (counted, then the job's end), not the tick's."""
        job_id = job["id"]
        with self._job_lock(job_id):
            fresh = self.store.get_job(job_id)
            # Final already: the exit watch recorded its end since the tick's listing.
            # Moved on since the jobs were read (its starter ran it after the containers
            # were listed): the listing predates its container, so its absence there
            # means nothing; the next tick looks again.
            if fresh is not None and fresh["status"] == job["status"]:
                self._step(fresh, container)
                fresh = self.store.get_job(job_id)
        if fresh is None or fresh["status"] in FINAL:
            self._drop_lock(job_id)  # a late waiter still holds the old lock: harmless

    def _step(self, job: dict[str, Any], container: dict[str, Any] | None) -> None:
        job_id = job["id"]
        try:
            if job["status"] == "running":
                self._watch_running(job, container)
            else:
                self._watch_starting(job, container)
        except PodmanError as exc:
            log.warning("podman failed for %s this tick: %s", job_id, exc)  # not the job's fault
        except Exception as exc:  # noqa: BLE001 - one job must not stop the others
            count = self._failures[job_id] = self._failures.get(job_id, 0) + 1
            log.exception("job %s: step failed (%d of %d)", job_id, count, MAX_JOB_FAILURES)
            if count >= MAX_JOB_FAILURES:
                self._give_up(job, exc)
        else:
            self._failures.pop(job_id, None)

    def _give_up(self, job: dict[str, Any], exc: Exception) -> None:
        """End a job the usual steps keep failing on, with the error that stopped them."""
        job_id = job["id"]
        self._failures.pop(job_id, None)
        self._forget(job_id)
        error = (
            f"Flashpods could not record this job's end ({type(exc).__name__}: {exc}); it "
            "was ended as failed, its log is kept as it was written."
        )
        try:
            self.engine.signal(job_id, "KILL")
            self.engine.finish(job, None, failure=error)
        except Exception:  # noqa: BLE001 - logged; the job's next tick tries again
            log.exception("job %s: could not be ended either", job_id)

    def _list_containers(self) -> list[dict[str, Any]]:
        """`podman ps`, recording whether Podman answered: /healthz reads that record."""
        try:
            found = self.runtime.containers()
        except PodmanError as exc:
            self.store.record_probe("podman", False, f"podman does not answer: {exc}")
            raise
        self.store.record_probe("podman", True, "answering")
        return found

    # -- running jobs --------------------------------------------------------

    def _watch_running(self, job: dict[str, Any], container: dict[str, Any] | None) -> None:
        job_id = job["id"]
        if container is None:
            self._forget(job_id)
            self.engine.finish(job, None, lost=True)
            return
        if container.get("State") in ("exited", "stopped"):
            job = self.limits.settle(job)  # a limit's kill may have ended it
            self._forget(job_id)
            self.engine.finish(job, _exit_code(container))
            return
        now = time.time()
        started = job["started_at"] or now
        if job["stop_requested_at"] is None and now > started + job["timeout_s"]:
            self.store.transition(
                job_id, ("running",), stop_requested_at=now, stop_reason="timeout"
            )
            job = self.store.get_job(job_id) or job
        self._enforce_log_cap(job)
        self._enforce_artifact_cap(job)
        self._enforce_budget(job)
        job = self.store.get_job(job_id) or job
        if self.limits.check(job, container):
            job = self.store.get_job(job_id) or job
        if job["stop_requested_at"] is not None and job["kill_sent_at"] is None:
            if (
                job["stop_reason"] in ("log_cap", "artifact_cap", *job_limits.REASONS)
                or now > job["stop_requested_at"] + self.config.kill_grace_s
            ):
                self.engine.signal(job_id, "KILL")
                self.store.transition(job_id, ("running",), kill_sent_at=now)
            elif not self._in_budget_notice(job, now):
                self.engine.signal(job_id, "TERM")

    def _in_budget_notice(self, job: dict[str, Any], now: float) -> bool:
        notice = BUDGET_NOTICE_FRACTION * self.config.kill_grace_s
        if job["stop_reason"] != budgets.STOP_REASON:
            return False
        return bool(now < job["stop_requested_at"] + notice)

    def _forget(self, job_id: str) -> None:
        self.limits.forget(job_id)
        self._decoders.pop(job_id, None)
        self._artifact_checked.pop(job_id, None)

    def _enforce_log_cap(self, job: dict[str, Any]) -> None:
        cap = self.config.limits["log_bytes"]
        path = logs.ctr_log_path(self.config.logs_dir, job["id"])
        decoder = self._decoders[job["id"]] = logs.decoded_size(path, self._decoders.get(job["id"]))
        if decoder.decoded > cap and not job["log_capped"]:
            self.store.transition(job["id"], ("running",), log_capped=1)
        if decoder.decoded > 2 * cap and job["stop_reason"] != "log_cap":
            self.store.transition(
                job["id"],
                ("running",),
                stop_requested_at=time.time(),
                stop_reason="log_cap",
                kill_sent_at=None,
            )

    def _enforce_artifact_cap(self, job: dict[str, Any]) -> None:
        """Walk a running job's /artifacts every few seconds; over the cap, it is killed."""
        job_id = job["id"]
        if time.monotonic() - self._artifact_checked.get(job_id, 0.0) < ARTIFACT_CHECK_EVERY_S:
            return
        self._artifact_checked[job_id] = time.monotonic()
        if job["stop_reason"] not in ("artifact_cap", "log_cap") and self.engine.artifacts_over_cap(
            job_id
        ):
            self.store.transition(
                job_id, ("running",), stop_requested_at=time.time(), stop_reason="artifact_cap"
            )

    def _enforce_budget(self, job: dict[str, Any]) -> None:
        """A job whose model usage reached its budget is stopped like a timeout: TERM
        (after the notice, BUDGET_NOTICE_FRACTION), then KILL after kill_grace_s; the
        proxy refuses its model calls from the moment the budget is reached."""
        if job["stop_reason"] is None and budgets.exhausted(self.config, job):
            log.warning("job %s used its model token budget: stopping it", job["id"])
            self.store.transition(
                job["id"],
                ("running",),
                stop_requested_at=time.time(),
                stop_reason=budgets.STOP_REASON,
            )

    def _watch_starting(self, job: dict[str, Any], container: dict[str, Any] | None) -> None:
        job_id = job["id"]
        running = container is not None and container.get("State") == "running"
        if running and self.engine.warm.owns(job_id) and not self.engine.warm.handed_over(job_id):
            # A warm container waits for its command: its starter died before handing
            # it over (or is doing it now; the hand-over is idempotent).
            if time.time() - (job["claimed_at"] or 0) > WARM_HANDOVER_STALE_S:
                self.engine.start_claimed(job_id, warm=True)
            return
        if container is not None and container.get("State") in ("running", "exited", "stopped"):
            # Its starter died after `podman run` (or is about to record it: whichever
            # compare-and-set comes second is a no-op).
            note = self.runtime.limits_note(job["resources"] or {})
            self.store.transition(
                job_id,
                ("starting",),
                status="running",
                started_at=time.time(),
                limits_not_applied=note,
            )
            return
        if time.time() - (job["claimed_at"] or 0) < START_STALE_S:
            return  # an API worker may be inside `podman run` for it right now
        if container is not None:
            self.runtime.remove(job_id)  # created but never started: start over
        log.warning("job %s was left starting by a crash; queueing it again", job_id)
        self.store.transition(job_id, ("starting",), status="queued", claimed_at=None)

    def _remove_orphans(self, containers: dict[str, dict[str, Any]], active_ids: set[str]) -> None:
        for name in containers:
            if name in active_ids:
                continue
            job = self.store.get_job(name)
            if job is None or job["status"] in FINAL:
                log.info(
                    "removing container %s (%s)",
                    name,
                    "no job record" if job is None else "job is final",
                )
                self.runtime.remove(name)

    # -- retention -----------------------------------------------------------

    def retention(self) -> None:
        """Expired files go; each job's and upload's removal on its own (errors logged).

        A tree not gone yet (a removal's time budget, entries still locked) is not marked
        deleted, so the next pass resumes it.
        """
        now = time.time()
        for job in self.store.expired_files(now):
            _each(f"retention of {job['id']}", self._expire_job, job, now)
        stale_before = now - self.config.retention["uploads_s"]
        for upload in self.store.uploads_in("reserved"):
            if upload["created_at"] < stale_before:
                _each(f"expiry of {upload['id']}", self._expire_upload, upload)
        for upload in self.store.used_bases_to_expire(stale_before):
            _each(f"expiry of base {upload['id']}", self._expire_base, upload)
        _each("the sweep of stray workspaces", self._remove_stray_workspaces)

    def _expire_job(self, job: dict[str, Any], now: float) -> None:
        cfg = self.config
        job_id = ids.checked_job_id(job["id"])
        if not job["artifacts_deleted"] and job["artifacts_expire_at"] < now:
            gone = self.files.remove_tree(self.files.artifacts(job_id))
            gone &= self.files.remove_tree(artifacts.workspace_root(cfg.artifacts_dir, job_id))
            if gone:
                self.store.transition(job_id, FINAL, artifacts_deleted=1)
        if not job["logs_deleted"] and job["logs_expire_at"] < now:
            gone = True
            for path in (
                logs.final_log_path(cfg.logs_dir, job_id),
                logs.ctr_log_path(cfg.logs_dir, job_id),
            ):
                gone &= jobtree.remove(path).done  # a planted directory or link too
            if gone:
                self.store.transition(job_id, FINAL, logs_deleted=1)

    def _expire_upload(self, upload: dict[str, Any]) -> None:
        if self.store.set_upload(upload["id"], "reserved", state="expired"):
            self.files.remove_tree(self.files.upload_dir(upload["id"]))

    def _expire_base(self, upload: dict[str, Any]) -> None:
        gone = self.files.remove_tree(self.files.base_dir(upload["id"]))
        gone &= self.files.remove_tree(self.files.upload_dir(upload["id"]))  # never moved
        if gone:
            self.store.set_upload(upload["id"], "used", base_deleted=1)

    def _remove_stray_workspaces(self) -> None:
        """Workspaces of final jobs (a crash between recording the end and removing it, or
        a removal that ran out of its time budget)."""
        root = self.config.workspaces_dir
        if not root.is_dir():
            return
        with os.scandir(root) as it:
            names = [entry.name for entry in it if ids.is_job_id(entry.name)]
        for name in names:
            job = self.store.get_job(name)
            if job is not None and job["status"] in FINAL:
                self.files.remove_tree(self.files.workspace(name))


def _each(what: str, step: Callable[..., None], *args: Any) -> None:
    """Run one retention step; its failure is logged and retried next pass, never raised."""
    try:
        step(*args)
    except Exception:  # noqa: BLE001 - one job's files must not stop the others' retention
        log.exception("%s failed (retried on the next pass)", what)


def _exit_code(container: dict[str, Any]) -> int | None:
    code = container.get("ExitCode")
    return int(code) if isinstance(code, int) else None


def hold_lock(db_path: str) -> int:
    """One reaper per database: an exclusive lock next to it, held for the process's life."""
    fd = os.open(f"{db_path}.reaper.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SystemExit(
            f"Another flashpods-reaper already runs for {db_path}; stop it first."
        ) from None
    return fd


def install_signal_handlers(reaper: Reaper) -> None:
    def _stop(_signum: int, _frame: Any) -> None:
        reaper.request_stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
