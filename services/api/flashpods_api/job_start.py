"""What a job's start needs on both paths, cold (jobs.Engine) and warm (warm.WarmPool).

Both hand a job its upload and turn whatever stopped a start into the job's error
sentence; both drop a job's identity when a start is undone. Written once here, so the
two paths cannot drift apart and neither imports the other.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from .registrar import Registrar, RegistrarError
from .runtime import PodmanError

log = logging.getLogger(__name__)


class StartError(Exception):
    """A job cannot start for a reason the user can act on; the message says which."""


def take_upload(source: Path, target: Path, upload_id: str) -> None:
    """Move a job's upload to where its container mounts it from; idempotent.

    A restart after a crash finds it moved already. Podman resolves a bind source on the
    host, so only a real directory (no link) may be left at `target`.
    """
    if not target.is_symlink() and not target.exists():
        try:
            os.rename(source, target)
        except FileNotFoundError:
            raise StartError(_gone(upload_id)) from None
    try:
        mode = os.lstat(target).st_mode
    except FileNotFoundError:
        raise StartError(_gone(upload_id)) from None
    if not stat.S_ISDIR(mode):
        raise StartError(
            f"The upload {upload_id} is not a directory on the host; upload a directory again."
        )


def _gone(upload_id: str) -> str:
    return (
        f"The upload {upload_id} is gone from the host (expired?); "
        "upload the files again and resubmit."
    )


def error_sentence(exc: Exception) -> str:
    """The job's error for what stopped its start."""
    if isinstance(exc, StartError):
        return str(exc)
    if isinstance(exc, PodmanError):
        return f"The container could not be started: {exc}."
    if isinstance(exc, OSError):
        reason = exc.strerror or exc
        return f"The job's directories could not be prepared: {reason} ({exc.filename})."
    if isinstance(exc, RegistrarError):
        return f"The job's SPIFFE identity could not be registered: {exc}"
    return f"The job could not be started: {type(exc).__name__}: {exc}."


def drop_identity(registrar: Registrar, job_id: str) -> None:
    """Unregister a job that ended or never started; a failure is logged, never raised."""
    try:
        registrar.unregister(job_id)
    except Exception as exc:  # noqa: BLE001 - a stale entry must not block the job's end
        log.warning("could not unregister %s: %s", job_id, exc)
