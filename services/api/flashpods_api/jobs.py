"""The job lifecycle shared by the API and the reaper: create, claim and start, stop, finish.

Starting is idempotent, so a job left in 'starting' by a crash can simply be started
again: directories are created if missing, the upload is renamed to its kept base only
if it has not been yet, and an existing container of that name is adopted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import time
from pathlib import Path
from typing import Any, Protocol

from . import artifacts, ids, job_limits, jobtree, logs, workspace_diff
from .config import Config
from .runtime import HELPER_IN_CONTAINER, PodmanError, RunSpec, Runtime
from .store import ACTIVE, FINAL, Store
from .warm import WarmPool

log = logging.getLogger(__name__)

DIR_MODE = 0o2770


class Registrar(Protocol):
    def register(self, job_id: str, kind: str) -> None: ...
    def unregister(self, job_id: str) -> None: ...


def default_registrar(config: Config) -> Registrar:
    from .registrar import make_registrar  # written alongside SPIRE support (docs/design.md)

    return make_registrar(config.raw)


class StartError(Exception):
    """A job cannot start for a reason the user can act on; the message says which."""


class Engine:
    def __init__(
        self, config: Config, store: Store, runtime: Runtime, registrar: Registrar
    ) -> None:
        self.config = config
        self.store = store
        self.runtime = runtime
        self.registrar = registrar
        self.warm = WarmPool(self)

    # -- paths ---------------------------------------------------------------

    # Ids are checked again here, where they become paths: a row read back from the
    # database is not trusted to hold what the API once validated (ids.BadId).

    def workspace(self, job_id: str) -> Path:
        return self.config.workspaces_dir / ids.checked_job_id(job_id)

    def artifacts(self, job_id: str) -> Path:
        return self.config.artifacts_dir / ids.checked_job_id(job_id)

    def upload_dir(self, upload_id: str) -> Path:
        return self.config.uploads_dir / ids.checked_upload_id(upload_id)

    def base_dir(self, upload_id: str) -> Path:
        return self.config.bases_dir / ids.checked_upload_id(upload_id)

    # -- starting ------------------------------------------------------------

    def start_next(self) -> list[str]:
        """Start queued jobs FIFO while under the cap; returns the ids claimed."""
        started = []
        while True:
            job_id = self.store.claim(self.config.max_concurrent_jobs)
            if job_id is None:
                return started
            if not self.start_claimed(job_id):
                return started  # Podman is down: the job waits in the queue again
            started.append(job_id)

    def try_start(self, job_id: str, warm: bool | None = None) -> bool:
        """POST /jobs' fast path: start this job now if it heads the queue and a slot is free."""
        if self.store.claim(self.config.max_concurrent_jobs, job_id) != job_id:
            return False
        return self.start_claimed(job_id, warm)

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
            if warm:
                note = self.warm.hand_over(job)
            else:
                input_dir = self._prepare(job)
                self.registrar.register(job_id, job["kind"])
                spec = self.spec(job, input_dir)
                note = self._run_or_adopt(spec)
        except PodmanError as exc:
            if _unreachable(exc):
                # Not the job's fault: keep its place (same seq) until Podman answers.
                log.warning("podman unreachable, %s waits in the queue: %s", job_id, exc)
                self.store.transition(job_id, ("starting",), status="queued", claimed_at=None)
                return False
            self._fail_start(job, _start_error(exc))
        except Exception as exc:  # noqa: BLE001 - every failure becomes the job's error sentence
            self._fail_start(job, _start_error(exc))
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
        self.prepare_dirs(job["id"])
        return self._prepare_upload(job)

    def prepare_dirs(self, job_id: str) -> None:
        """The job's workspace, artifacts dir and live log file (idempotent)."""
        for path in (self.workspace(job_id), self.artifacts(job_id)):
            path.mkdir(exist_ok=True)
            # Through an O_NOFOLLOW fd: the parents are group-writable by the container uid,
            # which may have put a link here (a restart re-prepares a known id).
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                os.fchmod(fd, DIR_MODE)
            finally:
                os.close(fd)
        self.config.logs_dir.mkdir(exist_ok=True)
        # Create the live log ourselves: conmon would create it 0600 as flashpods, which
        # the API user could not read. An existing file keeps our owner and mode.
        fd = os.open(
            logs.ctr_log_path(self.config.logs_dir, job_id),
            os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
            0o660,
        )
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise StartError("The job's live log is not a regular file on the host.")
            os.fchmod(fd, 0o660)
        finally:
            os.close(fd)

    def _prepare_upload(self, job: dict[str, Any]) -> str | None:
        upload_id = job.get("upload_id")
        if not upload_id:
            return None
        base = self.base_dir(upload_id)
        if not base.is_symlink() and not base.exists():
            self.config.bases_dir.mkdir(exist_ok=True)
            try:
                os.rename(self.upload_dir(upload_id), base)
            except FileNotFoundError:
                raise StartError(
                    f"The upload {upload_id} is gone from the host (expired?); "
                    "upload the files again and resubmit."
                ) from None
        # Podman resolves a bind source on the host: only a real directory may be mounted.
        if not stat.S_ISDIR(os.lstat(base).st_mode):
            raise StartError(
                f"The upload {upload_id} is not a directory on the host; upload a directory again."
            )
        return str(base)

    def command_argv(self, job: dict[str, Any]) -> list[str]:
        if job["kind"] == "worker":
            return ["sh", "-c", job["command"]]
        return list(self.config.sub_agent["command"])

    def request_env(self, job: dict[str, Any]) -> dict[str, str]:
        """What a job adds to its container's fixed environment: its prompt and its `env`.

        For a sub_agent the host's sub_agent.env wins for every ANTHROPIC_* name and a request's
        own ANTHROPIC_* names are dropped: a request must not point the agent's key at
        another endpoint (validate.py refuses them already; this holds even so).
        """
        env: dict[str, str] = {}
        if job["kind"] == "sub_agent":
            env["FLASHPODS_PROMPT"] = job["prompt"]
        env.update(job.get("env") or {})
        if job["kind"] == "sub_agent":
            env = {k: v for k, v in env.items() if not k.startswith("ANTHROPIC_")}
            agent_env = self.config.sub_agent["env"]
            env.update({k: v for k, v in agent_env.items() if k.startswith("ANTHROPIC_")})
        return env

    def spec(
        self, job: dict[str, Any], input_dir: str | None, control: str | None = None
    ) -> RunSpec:
        """The container of a job; with `control`, a warm one that waits for its command."""
        cfg = self.config
        env = {
            "FLASHPODS_JOB_ID": job["id"],
            "FLASHPODS_JOB_KIND": job["kind"],
            "FLASHPODS_TOKEN_SOCKET": "/run/flashpods/token.sock",
            "FLASHPODS_ATTESTATION": cfg.attestation,
            "SPIFFE_ENDPOINT_SOCKET": "unix:///run/spire/sockets/agent.sock",
            "HOME": "/tmp/home",
            "TMPDIR": "/tmp",
        }
        if job["kind"] == "sub_agent":
            env = {**cfg.sub_agent["env"], **env}
        if control:
            argv = [HELPER_IN_CONTAINER, "--wait-command"]
        else:
            argv = [HELPER_IN_CONTAINER, "--", *self.command_argv(job)]
            env.update(self.request_env(job))
        return RunSpec(
            job_id=job["id"],
            kind=job["kind"],
            instance=cfg.instance,
            image=job["image"],
            argv=argv,
            env=env,
            workspace=str(self.workspace(job["id"])),
            artifacts=str(self.artifacts(job["id"])),
            log_path=str(logs.ctr_log_path(cfg.logs_dir, job["id"])),
            helper_path=cfg.helper_path,
            token_socket=cfg.token_socket,
            network_mode=cfg.network_mode,
            input_dir=input_dir,
            agent_socket=cfg.spire["agent_socket"] if cfg.attestation == "spire" else None,
            agent_cli=cfg.spire["agent_cli"] if cfg.attestation == "spire" else None,
            resources=job_limits.container_resources(cfg, job),
            control_dir=control,
        )

    def _fail_start(self, job: dict[str, Any], error: str) -> None:
        job_id = job["id"]
        log.warning("job %s could not start: %s", job_id, error)
        with contextlib.suppress(PodmanError):  # else the reaper removes it once final
            self.runtime.remove(job_id)
        self.unregister(job_id)
        if self.store.transition(
            job_id, ("starting",), status="failed", error=error, **self._final_times()
        ):
            self._after_warm(job)
            self.remove_tree(self.workspace(job_id))

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
            **self._final_times(),
        )
        if not done:
            return
        if job.get("upload_id"):
            self.store.set_upload(job["upload_id"], "used", last_used_at=time.time())
        self.unregister(job_id)
        self._after_warm(job)
        self.remove_tree(self.workspace(job_id))
        try:
            self.runtime.remove(job_id)
        except PodmanError as exc:
            log.warning("could not remove container %s (retried by the reaper): %s", job_id, exc)

    def artifacts_over_cap(self, job_id: str) -> bool:
        """Over the byte cap, or a tree too deep or too large to measure (jobtree limits)."""
        seen = artifacts.measure(self.artifacts(job_id))
        return seen.limit is not None or seen.bytes > self.config.limits["artifact_bytes"]

    def artifacts_error(self, job_id: str, reason: str | None) -> str | None:
        """The job's error if its /artifacts broke a rule (None: fine). Never raises."""
        killed = " and was killed" if reason == "artifact_cap" else ""
        seen = artifacts.measure(self.artifacts(job_id))
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
        workspace = self.workspace(job_id)
        if not workspace.exists():
            return None  # recorded before a crash, workspace already gone
        base = None
        if job.get("upload_id"):
            base = self.warm.base(job) or self.base_dir(job["upload_id"])
        out = artifacts.workspace_root(self.config.artifacts_dir, job_id)
        cap = self.config.limits["artifact_bytes"]
        self._normalize_if_locked(workspace)
        self._normalize_if_locked(self.artifacts(job_id))
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

    def unregister(self, job_id: str) -> None:
        try:
            self.registrar.unregister(job_id)
        except Exception as exc:  # noqa: BLE001 - a stale entry must not block the job's end
            log.warning("could not unregister %s: %s", job_id, exc)

    def _final_times(self) -> dict[str, float]:
        now = time.time()
        ret = self.config.retention
        return {
            "finished_at": now,
            "artifacts_expire_at": now + ret["artifacts_s"],
            "logs_expire_at": now + ret["logs_s"],
        }

    # -- files a job may have locked -----------------------------------------

    def _normalize_if_locked(self, root: Path) -> None:
        """If the job left a file or dir the API user cannot read or remove, open it up.

        The job runs as `flashpods` and may chmod its files; the API user reaches them
        only through the group bits, so `flashpods-init --normalize` restores them from a
        throwaway container running as that same uid (docs/design.md).
        """
        if os.path.lexists(root) and _locked(root):
            self.normalize(root)

    def normalize(self, root: Path) -> None:
        # Podman resolves a bind source on the host: never mount what a link points at.
        try:
            if not stat.S_ISDIR(os.lstat(root).st_mode):
                return
        except OSError:
            return
        try:
            self.runtime.normalize(self.config.images["worker"], self.config.helper_path, str(root))
        except PodmanError as exc:
            log.warning("could not normalize %s: %s", root, exc)

    def remove_tree(self, root: Path) -> bool:
        """Remove a job-owned tree (jobtree: any depth, no links followed); True when gone.

        Opens up job-locked entries once (normalize) before giving up. Never raises:
        a tree not gone yet (time budget, entries still locked) is retried by the
        caller's next pass (the reaper's retention, or its sweep of stray workspaces).
        """
        result = jobtree.remove(root)
        if not result.done and result.denied:
            self.normalize(root)
            result = jobtree.remove(root)
        if not result.done:
            log.warning("%s not removed yet: %s", root, result.error)
        return result.done


def _locked(root: Path) -> bool:
    """Anything beneath root the API user may not read or remove (through its group)?"""
    if os.geteuid() == 0:
        return False
    mine = os.geteuid()
    for node in jobtree.walk(root):
        if node.error or node.limit:
            return True  # unreadable, or not seen whole: let normalize open it up
        st = node.st
        if st is None or st.st_uid == mine or stat.S_ISLNK(st.st_mode):
            continue
        need = 0o070 if stat.S_ISDIR(st.st_mode) else 0o060
        if (st.st_mode & need) != need:
            return True
    return False


def _unreachable(exc: PodmanError) -> bool:
    text = str(exc).lower()
    return "unable to connect to podman" in text or "did not answer within" in text


def _start_error(exc: Exception) -> str:
    if isinstance(exc, StartError):
        return str(exc)
    if isinstance(exc, PodmanError):
        return f"The container could not be started: {exc}."
    if isinstance(exc, OSError):
        reason = exc.strerror or exc
        return f"The job's directories could not be prepared: {reason} ({exc.filename})."
    name = type(exc).__name__
    if name == "RegistrarError":
        return f"The job's SPIFFE identity could not be registered: {exc}"
    return f"The job could not be started: {name}: {exc}."
