"""A job's artifacts: the listing, one file, or all of them as one tar stream."""

from __future__ import annotations

import os
from typing import Any

from flask import Blueprint, Response, jsonify

from .. import artifacts, validate
from ..errors import ApiError, not_found
from . import engine, known_job
from .files import file_response

bp = Blueprint("artifacts", __name__)


def _artifacts_job(job_id: str) -> dict[str, Any]:
    job = known_job(job_id)
    if job["artifacts_deleted"]:
        raise ApiError(
            410,
            "artifacts_expired",
            f"The artifacts of {job_id} were deleted after the retention period.",
        )
    return job


@bp.get("/jobs/<job_id>/artifacts")
def list_artifacts(job_id: str) -> Response:
    job = _artifacts_job(job_id)
    root = engine().config.artifacts_dir
    files, skipped = artifacts.listing(root, job_id, job["artifacts_glob"])
    return jsonify(
        {"job_id": job_id, "status": job["status"], "artifacts": files, "skipped": skipped}
    )


@bp.get("/jobs/<job_id>/artifacts.tar")
def artifacts_tar(job_id: str) -> Response:
    job = _artifacts_job(job_id)
    root = engine().config.artifacts_dir
    members, length = artifacts.tar_plan(root, job_id, job["artifacts_glob"])
    headers = {
        "Content-Disposition": f'attachment; filename="{job_id}-artifacts.tar"',
        "Content-Length": str(length),
    }
    stream = artifacts.stream_tar(members)
    return Response(stream, mimetype="application/x-tar", headers=headers, direct_passthrough=True)


@bp.get("/jobs/<job_id>/artifacts/<path:path>")
def artifact_file(job_id: str, path: str) -> Response:
    _artifacts_job(job_id)
    validate.artifact_path(path)
    try:
        root, rel = artifacts.resolve(engine().config.artifacts_dir, job_id, path)
        fd = artifacts.open_beneath(root, rel)
    except artifacts.NotServed as exc:
        if exc.reason in ("missing", "no artifacts"):
            raise not_found(
                "unknown_artifact", f"Job {job_id} has no artifact {path!r}; list them first."
            ) from None
        raise not_found(
            "artifact_not_served",
            f"{path!r} is a {exc.reason}, not a regular file; only regular files are served.",
        ) from None
    size = os.fstat(fd).st_size
    return file_response(os.fdopen(fd, "rb"), size)
