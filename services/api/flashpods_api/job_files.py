"""A job's directories on the host: where they are, making them, opening and removing them.

Ids are checked again here, where they become paths: a row read back from the database
is not trusted to hold what the API once validated (ids.BadId).
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from . import ids, jobtree, logs
from .config import Config
from .job_start import StartError
from .runtime import PodmanError, Runtime

log = logging.getLogger(__name__)

DIR_MODE = 0o2770


class JobFiles:
    def __init__(self, config: Config, runtime: Runtime) -> None:
        self.config = config
        self.runtime = runtime  # for normalize: a throwaway container as the job's uid

    # -- paths ---------------------------------------------------------------

    def workspace(self, job_id: str) -> Path:
        return self.config.workspaces_dir / ids.checked_job_id(job_id)

    def artifacts(self, job_id: str) -> Path:
        return self.config.artifacts_dir / ids.checked_job_id(job_id)

    def upload_dir(self, upload_id: str) -> Path:
        return self.config.uploads_dir / ids.checked_upload_id(upload_id)

    def base_dir(self, upload_id: str) -> Path:
        return self.config.bases_dir / ids.checked_upload_id(upload_id)

    # -- making --------------------------------------------------------------

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

    # -- files a job may have locked -----------------------------------------

    def normalize_if_locked(self, root: Path) -> None:
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
