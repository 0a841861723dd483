"""The warm pool: job containers created and started ahead of demand, handed their command.

`podman run` is the floor of a cold start, so a fast start cannot run a container on
the hot path. The reaper keeps `warm_pool[kind]` containers of each kind running with
everything of the container contract fixed at creation: the name and labels of the job
id they will carry (plus `flashpods.warm=1`), its directories, mounts, flags and
identity (registered in spire mode). Their command is `flashpods-init --wait-command`,
which waits, asking nobody for anything, until the API writes the job's command into
the job's control directory (mounted read-only at /flashpods/control).

A warm container is not a job: it never counts against `max_concurrent_jobs` and the
token service refuses it (label flashpods.warm=1 without a `command` file in its
control mount) until a job has claimed it. `POST /jobs` takes one, inserts the job
under the container's id and claims it, all in one write transaction (`Store.submit`:
the take is a compare-and-set), then hands the command over: a rename of a file.

Hand-over format (read by images/helper/handover.c): NUL-terminated strings
`flashpods-command-1`, ARGC, ARGV..., ENVC, NAME=VALUE...
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any

from . import ids, logs
from .config import Config
from .container_spec import ContainerSpecs
from .job_files import JobFiles
from .job_start import drop_identity, take_upload
from .kinds import KINDS
from .registrar import Registrar
from .runtime import CONTROL_IN_CONTAINER, PodmanError, Runtime
from .store import FINAL, Store

log = logging.getLogger(__name__)

MAGIC = "flashpods-command-1"
COMMAND_FILE = "command"
UPLOAD_NAME = "upload"  # the job's upload, renamed into its control dir at hand-over
CONTROL_MODE = 0o2750  # the API writes; the job (group flashpods) and token service read
# A row taken by a request that died before it created its job is given back after this.
TAKEN_STALE_S = 60.0
CREATING_STALE_S = 90.0


def encode_command(argv: list[str], env: dict[str, str]) -> bytes:
    parts = [MAGIC, str(len(argv)), *argv, str(len(env)), *(f"{k}={v}" for k, v in env.items())]
    if any("\0" in p for p in parts):
        raise ValueError("a command, argument or environment value holds a NUL byte")
    return b"".join(p.encode() + b"\0" for p in parts)


def write_command(control: Path, argv: list[str], env: dict[str, str]) -> None:
    """Temp file + rename: the waiting helper sees the whole command or nothing."""
    tmp = control / f".{COMMAND_FILE}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o640)
    try:
        data = encode_command(argv, env)
        while data:
            data = data[os.write(fd, data) :]
    finally:
        os.close(fd)
    os.rename(tmp, control / COMMAND_FILE)


class WarmPool:
    def __init__(
        self,
        config: Config,
        store: Store,
        runtime: Runtime,
        registrar: Registrar,
        files: JobFiles,
        specs: ContainerSpecs,
    ) -> None:
        self.config = config
        self.store = store
        self.runtime = runtime
        self.registrar = registrar
        self.files = files
        self.specs = specs
        self.targets: dict[str, int] = {k: n for k, n in self.config.warm_pool.items() if n > 0}

    def control(self, job_id: str) -> Path:
        return self.config.control_dir / job_id

    # -- the API's side ------------------------------------------------------

    def wanted(self, record: dict[str, Any]) -> tuple[str, str] | None:
        """(kind, image) of a warm container this new job may take, or None: start cold."""
        kind = record["kind"]
        if not self.targets.get(kind) or record.get("resources"):
            return None  # resource limits are flags of `podman run`: only a cold start sets them
        image = self.config.images[kind]
        return (kind, image) if record["image"] == image else None

    def owns(self, job_id: str) -> bool:
        if not self.targets and not self.config.warm_pool:
            return False
        row = self.store.get_warm(job_id)
        return row is not None and row["state"] == "taken"

    def hand_over(self, job: dict[str, Any]) -> str | None:
        """Give the claimed job's warm container its upload and command; idempotent."""
        job_id = job["id"]
        control = self.control(job_id)
        env = dict(self.specs.request_env(job))
        upload_id = job.get("upload_id")
        if upload_id:
            take_upload(self.files.upload_dir(upload_id), control / UPLOAD_NAME, upload_id)
            env["FLASHPODS_INPUT_DIR"] = f"{CONTROL_IN_CONTAINER}/{UPLOAD_NAME}"
        write_command(control, self.specs.command_argv(job), env)
        row = self.store.get_warm(job_id)
        return row["limits_not_applied"] if row else None

    def handed_over(self, job_id: str) -> bool:
        return (self.control(job_id) / COMMAND_FILE).is_file()

    def base(self, job: dict[str, Any]) -> Path | None:
        """Where a warm job's upload sits while it runs (None: not a warm job's upload)."""
        path = self.control(job["id"]) / UPLOAD_NAME
        return path if path.is_dir() and not path.is_symlink() else None

    def after_job(self, job: dict[str, Any]) -> None:
        """A warm job ended: its upload becomes its kept base, its control dir and row go."""
        job_id = job["id"]
        upload = self.control(job_id) / UPLOAD_NAME
        if job.get("upload_id") and upload.is_dir() and not upload.is_symlink():
            base = self.files.base_dir(job["upload_id"])
            if not base.exists() and not base.is_symlink():
                self.config.bases_dir.mkdir(exist_ok=True)
                os.rename(upload, base)
        self.files.remove_tree(self.control(job_id))
        self.store.delete_warm(job_id)

    # -- the reaper's side ---------------------------------------------------

    def create(self, kind: str) -> None:
        """Create and start one warm container of `kind` (its job id fixed now)."""
        warm_id = ids.new_job_id()
        image = self.config.images[kind]
        self.store.add_warm(warm_id, kind, image)
        try:
            self.files.prepare_dirs(warm_id)
            root = self.config.control_dir
            if not root.is_dir():
                root.mkdir(parents=True, exist_ok=True)
                os.chmod(root, CONTROL_MODE)
                # Group flashpods (as the workspaces): the job and token service read it.
                with contextlib.suppress(OSError):
                    os.chown(root, -1, self.config.workspaces_dir.stat().st_gid)
            control = self.control(warm_id)
            control.mkdir(exist_ok=True)
            os.chmod(control, CONTROL_MODE)
            self.registrar.register(warm_id, kind)
            job = {"id": warm_id, "kind": kind, "image": image, "env": {}, "resources": {}}
            spec = self.specs.spec(job, None, control=str(control))
            _cid, note = self.runtime.run(spec)
        except Exception as exc:  # noqa: BLE001 - a pool that cannot fill must not stop the reaper
            log.warning("could not create a warm %s container: %s", kind, exc)
            self.discard(warm_id)
            raise
        self.store.set_warm(warm_id, ("creating",), state="ready", limits_not_applied=note)

    def discard(self, warm_id: str) -> None:
        """Remove an unclaimed warm container and everything made for it."""
        with contextlib.suppress(PodmanError):
            self.runtime.remove(warm_id)
        drop_identity(self.registrar, warm_id)
        for path in (
            self.files.workspace(warm_id),
            self.files.artifacts(warm_id),
            self.control(warm_id),
        ):
            self.files.remove_tree(path)
        logs.ctr_log_path(self.config.logs_dir, warm_id).unlink(missing_ok=True)
        self.store.delete_warm(warm_id)

    def reconcile(self, containers: dict[str, dict[str, Any]]) -> set[str]:
        """Match warm rows with containers after anything (a crash); returns the names kept."""
        keep: set[str] = set()
        now = time.time()
        for row in self.store.warm_rows():
            warm_id, state = row["id"], row["state"]
            container = containers.get(warm_id)
            running = container is not None and container.get("State") == "running"
            if state == "creating":
                if running:
                    self.store.set_warm(warm_id, ("creating",), state="ready")
                    keep.add(warm_id)
                elif now - row["created_at"] > CREATING_STALE_S:
                    self.discard(warm_id)
                else:
                    keep.add(warm_id)
            elif state == "ready":
                if running:
                    keep.add(warm_id)
                else:
                    log.warning("warm container %s is gone or stopped; replacing it", warm_id)
                    self.discard(warm_id)
            else:  # taken
                job = self.store.get_job(warm_id)
                if job is None:
                    if now - (row["taken_at"] or 0) > TAKEN_STALE_S:
                        self.discard(warm_id)
                    else:
                        keep.add(warm_id)
                elif job["status"] in FINAL:
                    with contextlib.suppress(PodmanError):
                        self.runtime.remove(warm_id)
                    self.after_job(job)
                else:
                    keep.add(warm_id)  # its job's own lifecycle follows it
        return keep

    def refill(self) -> None:
        """Top each kind up to its target; surplus ready containers (target lowered) go."""
        rows = self.store.warm_rows()
        for kind in KINDS:
            want = self.targets.get(kind, 0)
            mine = [r for r in rows if r["kind"] == kind and r["state"] in ("creating", "ready")]
            for row in mine[want:]:
                if row["state"] == "ready" and self.store.set_warm(
                    row["id"], ("ready",), state="creating"
                ):
                    self.discard(row["id"])
            for _ in range(want - len(mine)):
                try:
                    self.create(kind)
                except Exception:  # noqa: BLE001 - logged in create; retried next tick
                    return

    def ready_counts(self) -> dict[str, int]:
        counts = self.store.warm_ready_counts()
        return {kind: counts.get(kind, 0) for kind in KINDS}
