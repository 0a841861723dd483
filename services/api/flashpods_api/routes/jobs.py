"""Jobs: submit, list, look at and kill (POST/GET /jobs, GET /jobs/<id>, POST .../kill)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request

from .. import artifacts, ids, job_json, validate
from ..errors import ApiError, bad_request, conflict
from ..store import QueueFull, UploadUnavailable
from . import engine, known_job

bp = Blueprint("jobs", __name__)


@bp.post("/jobs")
def create_job() -> tuple[Response, int]:
    eng = engine()
    cfg, store = eng.config, eng.store
    record = validate.job_request(validate.json_body(request.get_data(cache=False)), cfg)
    if record["upload_id"]:
        _check_upload(record["upload_id"])
    record["id"] = ids.new_job_id()
    try:
        job, warm = store.submit(
            record,
            cfg.queue_limit,
            claim_cap=cfg.max_concurrent_jobs,
            warm=eng.warm.wanted(record),
        )
    except UploadUnavailable as exc:
        raise _upload_error(record["upload_id"], exc.reason) from None
    except QueueFull:
        raise ApiError(
            429,
            "queue_full",
            f"The queue holds {cfg.queue_limit} jobs already; wait for some to finish and retry.",
        ) from None
    if job["status"] == "starting":  # claimed in the same transaction: start it now
        eng.start_claimed(job["id"], warm=warm, job=job)
    return jsonify({"job": job_json.public(store, store.get_job(job["id"]))}), 201


def _check_upload(upload_id: str) -> None:
    eng = engine()
    upload = eng.store.get_upload(upload_id)
    if upload is None or upload["state"] != "reserved":
        raise _upload_error(upload_id, "unknown" if upload is None else upload["state"])
    seen = artifacts.measure(eng.files.upload_dir(upload_id))
    if seen.limit:
        raise ApiError(
            413,
            "upload_too_large",
            f"The upload holds {seen.limit}, more than this host walks; "
            "upload a smaller, shallower tree.",
        )
    most = eng.config.limits["upload_bytes"]
    if seen.bytes > most:
        raise ApiError(
            413,
            "upload_too_large",
            f"The upload holds {seen.bytes} bytes, more than this host's limit of {most}; "
            "upload fewer files.",
        )


def _upload_error(upload_id: str, reason: str) -> ApiError:
    if reason == "used":
        return conflict(
            "upload_used",
            f"Upload {upload_id} was already used by another job; "
            "reserve a new one with POST /uploads.",
        )
    if reason == "expired":
        return bad_request(
            "upload_expired",
            f"Upload {upload_id} expired unused; reserve a new one with POST /uploads.",
        )
    return bad_request(
        "unknown_upload", f"There is no upload {upload_id}; reserve one with POST /uploads first."
    )


@bp.get("/jobs")
def list_jobs() -> Response:
    query = validate.jobs_query(request.args)
    store = engine().store
    rows = store.list_jobs(query.status, query.kind, query.limit, query.before)
    next_cursor = str(rows[-1]["seq"]) if len(rows) == query.limit else None
    jobs: list[dict[str, Any]] = [job_json.public(store, r) for r in rows]
    return jsonify({"jobs": jobs, "next_cursor": next_cursor})


@bp.get("/jobs/<job_id>")
def get_job(job_id: str) -> Response:
    return jsonify({"job": job_json.public(engine().store, known_job(job_id))})


@bp.post("/jobs/<job_id>/kill")
def kill_job(job_id: str) -> Response:
    known_job(job_id)
    eng = engine()
    return jsonify({"job": job_json.public(eng.store, eng.kill(job_id))})
