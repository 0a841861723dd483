"""The API's routes, one blueprint per resource (docs/api.md); each reads the Engine that
create_app put in `current_app.extensions`, so a route holds no state of its own."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app

from .. import validate
from ..errors import not_found
from ..jobs import Engine

EXTENSION = "flashpods"


def engine() -> Engine:
    found: Engine = current_app.extensions[EXTENSION]
    return found


def known_job(job_id: str) -> dict[str, Any]:
    """The job's row, or a 400 for a malformed id and a 404 for an unknown one."""
    validate.job_id(job_id)
    job = engine().store.get_job(job_id)
    if job is None:
        raise not_found(
            "unknown_job", f"There is no job {job_id} on this host; list jobs with GET /jobs."
        )
    return job


def blueprints() -> list[Blueprint]:
    from . import artifacts, jobs, logs, meta, uploads

    return [uploads.bp, jobs.bp, logs.bp, artifacts.bp, meta.bp]
