"""The job lifecycle shared by the API and the reaper: create, claim and start, stop, finish.

Starting is idempotent, so a job left in 'starting' by a crash can simply be started
again: directories are created if missing, the upload is renamed to its kept base only
if it has not been yet, and an existing container of that name is adopted.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

from . import artifacts, budgets, ids, job_limits, jobtree, logs, workspace_diff
from .config import Config
from .container_spec import ContainerSpecs
from .job_files import JobFiles
from .job_start import drop_identity, error_sentence, take_upload
from .registrar import Registrar, make_registrar
from .runtime import PodmanError, RunSpec, Runtime
from .store import ACTIVE, FINAL, Store
from .warm import WarmPool

log = logging.getLogger(__name__)


def default_registrar(config: Config) -> Registrar:
    return make_registrar(config.raw)


class Engine:
    def __init__(
        self, config: Config, store: Store, runtime: Runtime, registrar: Registrar
    ) -> None:
        self.config = config
        self.store = store
        self.runtime = runtime
        self.registrar = registrar
        self.files = JobFiles(config, runtime)
        self.specs = ContainerSpecs(config, self.files)
        self.warm = WarmPool(config, store, runtime, registrar, self.files, self.specs)

    # -- starting ------------------------------------------------------------

    def start_next(self) -> list[str]:
        """Start queued jobs FIFO while under the cap; returns the ids claimed."""
        started: list[str] = []
        while True:
            job_id = self.store.claim(self.config.max_concurrent_jobs)
            if job_id is None:
                return started
            if not self.start_claimed(job_id):
                return started  # Podman is down: the job waits in the queue again
            started.append(job_id)

    def start_claimed(
        self, job_id: str, warm: bool | None = None, job: dict[str, Any] | None = None
    ) -> bool:
        """Start a claimed job; False if Podman is unreachable and the job was queued again.

        A job that took a warm container (`warm`, looked up when None) is handed its
        command instead: its container runs already, with its id, labels and identity.
        """
        if job is None:
            job = self.store.get_job(job_id)
        if job is None or job["status"] != "starting":
            return True
        if warm is None:
            warm = self.warm.owns(job_id)
        try:
            # Before the job's first instruction runs: the proxy reads it from there.
            budgets.write_budget(self.config, job)
            if warm:
                note = self.warm.hand_over(job)
            else:
                input_dir = self._prepare(job)
                self.registrar.register(job_id, job["kind"])
                spec = self.specs.spec(job, input_dir)
                note = self._run_or_adopt(spec)
        except PodmanError as exc:
            if _unreachable(exc):
                # Not the job's fault: keep its place (same seq) until Podman answers.
                log.warning("podman unreachable, %s waits in the queue: %s", job_id, exc)
                self.store.transition(job_id, ("starting",), status="queued", claimed_at=None)
                return False
            self._fail_start(job, error_sentence(exc))
        except Exception as exc:  # noqa: BLE001 - every failure becomes the job's error sentence
            self._fail_start(job, error_sentence(exc))
        else:
            self.store.transition(
                job_id,
                ("starting",),
                status="running",
                started_at=time.time(),
                limits_not_applied=note,
            )
        return True

    def _run_or_adopt(self, spec: RunSpec) -> str | None:
        try:
            _cid, note = self.runtime.run(spec)
            return note
        except PodmanError as exc:
            if "already in use" not in exc.stderr:
                raise
        # A start before a crash got this far already: adopt what is running, redo the rest.
        for container in self.runtime.containers():
            if spec.job_id in (container.get("Names") or []):
                if container.get("State") in ("running", "exited", "stopped"):
                    return self.runtime.limits_note(spec.resources)
                self.runtime.remove(spec.job_id)
        _cid, note = self.runtime.run(spec)
        return note

    def _prepare(self, job: dict[str, Any]) -> str | None:
        """The job's directories; returns its upload's kept base, mounted at /input."""
        self.files.prepare_dirs(job["id"])
        upload_id = job.get("upload_id")
        if not upload_id:
            return None
        base = self.files.base_dir(upload_id)
        self.config.bases_dir.mkdir(exist_ok=True)
        take_upload(self.files.upload_dir(upload_id), base, upload_id)
        return str(base)

    def _fail_start(self, job: dict[str, Any], error: str) -> None:
        job_id = job["id"]
        log.warning("job %s could not start: %s", job_id, error)
        with contextlib.suppress(PodmanError):  # else the reaper removes it once final
            self.runtime.remove(job_id)
        drop_identity(self.registrar, job_id)
        budgets.remove_budget(self.config, job_id)
        if self.store.transition(
            job_id, ("starting",), status="failed", error=error, **self._final_times()
        ):
            self._after_warm(job)
            self.files.remove_tree(self.files.workspace(job_id))

    # -- stopping ------------------------------------------------------------

    def kill(self, job_id: str) -> dict[str, Any] | None:
        """Dequeue a queued job or ask a starting/running one to stop; idempotent."""
        if self.store.transition(
            job_id, ("queued",), status="killed", error=None, **self._final_times()
        ):
            return self.store.get_job(job_id)
        job = self.store.get_job(job_id)
        if job is None or job["status"] in FINAL:
            return job
        if job["stop_requested_at"] is None:
            self.store.transition(job_id, ACTIVE, stop_requested_at=time.time(), stop_reason="kill")
        if job["status"] == "running":
            self.signal(job_id, "TERM")
        return self.store.get_job(job_id)

    def signal(self, job_id: str, sig: str) -> None:
        try:
            self.runtime.signal(job_id, sig)
        except PodmanError as exc:
            log.warning("could not signal %s: %s", job_id, exc)

    # -- finishing -----------------------------------------------------------

    def finish(
        self,
        job: dict[str, Any],
        exit_code: int | None,
        lost: bool = False,
        failure: str | None = None,
    ) -> None:
        """Record a job's end (log, workspace changes, status); then drop workspace, container.

        Nothing the job left can make this raise out of a walk or a removal (jobtree); what
        it cannot do becomes the job's error. `failure`: the reaper gave up on the usual
        steps after repeated errors (its text); the live log stays the job's log then.
        """
        job_id = ids.checked_job_id(job["id"])
        cap = self.config.limits["log_bytes"]
        log_bytes: int | None
        if failure is None:
            # A full disk must not stop the steps below: free the workspace first (job_limits).
            cleared = job_limits.clear_before_finish(self, job)
            log_bytes, capped = logs.finalize(self.config.logs_dir, job_id, cap)
            changes = cleared or self._record_changes(job)
        else:
            log_bytes, capped, changes = job.get("log_bytes"), bool(job.get("log_capped")), None
        # The stop reason as it is now, not as the caller read it: a kill records its
        # reason before it signals, so a job seen ended after that signal always finds
        # it here, even when the caller's row was read before the kill (reaper tick).
        fresh = self.store.get_job(job_id)
        reason = (fresh or job).get("stop_reason")
        found: dict[str, Any] = {}
        if (
            reason is None
            and failure is None
            and not lost
            and exit_code not in (None, 0)
            and budgets.exhausted(self.config, fresh or job)
        ):
            # It failed on its own at its budget: the proxy's refusal ended it before
            # the reaper's next look could record the stop. That is why it failed.
            reason = found["stop_reason"] = budgets.STOP_REASON
        artifacts_error = None if failure else self.artifacts_error(job_id, reason)
        error = None
        if failure is not None:
            status = "failed"
            error = failure
        elif lost:
            status = "lost"
            error = (
                "The job's container disappeared while Flashpods was not watching (removed "
                "outside Flashpods, or its Podman storage was reset); its exit code is unknown "
                "and its log is kept up to that point."
            )
        elif reason == "timeout":
            status = "timed_out"
            error = (
                f"The job ran longer than its timeout_s of {job['timeout_s']:g} s and was stopped."
            )
        elif reason == "kill":
            status = "killed"
        elif reason == "log_cap":
            status = "failed"
            error = (
                f"The job wrote more than {2 * cap} bytes of output (twice the log cap of {cap} "
                "bytes) and was killed; "
                "write large output to /artifacts instead of stdout."
            )
        elif reason == budgets.STOP_REASON:
            status = "failed"
            error = budgets.error_for(job, self.config)
        elif reason in job_limits.REASONS:
            status = "failed"
            error = job_limits.error_for(reason, job, self.config)
        elif exit_code == 137 and job_limits.oom_killed(self.runtime, job_id):
            status = "failed"
            error = job_limits.error_for("memory_limit", job, self.config)
        elif artifacts_error is not None:
            status = "failed"
            error = artifacts_error
        else:
            status = "succeeded" if exit_code == 0 else "failed"
        done = self.store.transition(
            job_id,
            ACTIVE,
            status=status,
            exit_code=exit_code,
            error=error,
            log_bytes=log_bytes,
            log_capped=int(capped),
            workspace_changes=changes,
            **found,
            **self._final_times(),
        )
        if not done:
            return
        if job.get("upload_id"):
            self.store.set_upload(job["upload_id"], "used", last_used_at=time.time())
        drop_identity(self.registrar, job_id)
        budgets.remove_budget(self.config, job_id)
        self._after_warm(job)
        self.files.remove_tree(self.files.workspace(job_id))
        try:
            self.runtime.remove(job_id)
        except PodmanError as exc:
            log.warning("could not remove container %s (retried by the reaper): %s", job_id, exc)

    def artifacts_over_cap(self, job_id: str) -> bool:
        """Over the byte cap, or a tree too deep or too large to measure (jobtree limits)."""
        seen = artifacts.measure(self.files.artifacts(job_id))
        return seen.limit is not None or seen.bytes > self.config.limits["artifact_bytes"]

    def artifacts_error(self, job_id: str, reason: str | None) -> str | None:
        """The job's error if its /artifacts broke a rule (None: fine). Never raises."""
        killed = " and was killed" if reason == "artifact_cap" else ""
        seen = artifacts.measure(self.files.artifacts(job_id))
        if seen.limit is not None:
            shape = seen.limit if seen.limit.startswith("nested") else f"with {seen.limit}"
            return (
                f"The job left a tree in /artifacts {shape}{killed}; Flashpods "
                f"walks at most {jobtree.MAX_DEPTH} levels and {jobtree.MAX_ENTRIES} entries, "
                "so it cannot measure or list it whole: keep artifacts shallower and fewer."
            )
        if reason == "artifact_cap" or seen.bytes > self.config.limits["artifact_bytes"]:
            return (
                f"The job wrote more than {self.config.limits['artifact_bytes']} bytes into "
                f"/artifacts (this host's cap){killed}; keep fewer or smaller artifacts."
            )
        return None

    def _record_changes(self, job: dict[str, Any]) -> dict[str, Any] | None:
        job_id = job["id"]
        workspace = self.files.workspace(job_id)
        if not workspace.exists():
            return None  # recorded before a crash, workspace already gone
        base = None
        if job.get("upload_id"):
            base = self.warm.base(job) or self.files.base_dir(job["upload_id"])
        out = artifacts.workspace_root(self.config.artifacts_dir, job_id)
        cap = self.config.limits["artifact_bytes"]
        self.files.normalize_if_locked(workspace)
        self.files.normalize_if_locked(self.files.artifacts(job_id))
        try:
            return workspace_diff.record(base, workspace, out, cap)
        except Exception as exc:  # noqa: BLE001 - the job still ends; the record says why
            log.warning("workspace changes of %s not recorded: %s", job_id, exc)
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            return {"error": f"workspace changes could not be recorded: {reason}"}

    def _after_warm(self, job: dict[str, Any]) -> None:
        if self.warm.owns(job["id"]):
            try:
                self.warm.after_job(job)
            except OSError as exc:  # retried by the reaper's warm reconcile
                log.warning("could not clean up warm job %s: %s", job["id"], exc)

    def _final_times(self) -> dict[str, float]:
        now = time.time()
        ret = self.config.retention
        return {
            "finished_at": now,
            "artifacts_expire_at": now + ret["artifacts_s"],
            "logs_expire_at": now + ret["logs_s"],
        }


def _unreachable(exc: PodmanError) -> bool:
    text = str(exc).lower()
    return "unable to connect to podman" in text or "did not answer within" in text
