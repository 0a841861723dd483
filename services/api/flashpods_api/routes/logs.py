"""GET /jobs/<id>/logs: a page of a job's log as JSON or raw bytes, or a live follow."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, jsonify, request

from .. import logs, validate, waiting
from ..config import Config
from ..errors import ApiError
from ..filewatch import FileWatch
from ..store import FINAL, Store
from . import engine, known_job
from .files import file_response

bp = Blueprint("logs", __name__)

LOG_LIMIT_DEFAULT = 1024 * 1024
LOG_LIMIT_MAX = 8 * 1024 * 1024
# A finished job's raw log goes out by sendfile, never through memory, so a client may ask
# for the whole log in one page; anything read into memory stays capped at LOG_LIMIT_MAX.
RAW_FINAL_LIMIT_MAX = 1024 * 1024 * 1024
# A follower wakes on every write to the live log and on every job's end (inotify on
# the end notice, waiting.py); this recheck is only the net under a lost notice.
FOLLOW_RECHECK_S = waiting.RECHECK_S
FOLLOW_CHUNK = 256 * 1024


@bp.get("/jobs/<job_id>/logs")
def job_logs(job_id: str) -> Response:
    job = known_job(job_id)
    query = validate.logs_query(request.args, LOG_LIMIT_DEFAULT, RAW_FINAL_LIMIT_MAX)
    if job["logs_deleted"]:
        raise ApiError(
            410, "logs_expired", f"The log of {job_id} was deleted after the retention period."
        )
    wait_s = waiting.query_wait(request.args)
    eng = engine()
    cfg = eng.config
    cap = cfg.limits["log_bytes"]
    offset, limit = query.offset, query.limit
    if query.follow:
        return _follow_response(eng.store, cfg, job_id, offset, cap)
    if wait_s and job["status"] not in FINAL:
        job = _wait_for_output(eng.store, cfg, job, offset, cap, wait_s)
    final = job["status"] in FINAL
    if query.raw and (opened := logs.open_final(cfg.logs_dir, job_id, offset, limit)):
        fh, length = opened
        headers = {
            "X-Flashpods-Next-Offset": str(offset + length),
            "X-Flashpods-Final": str(final).lower(),
        }
        return file_response(fh, length, headers)
    # Read into memory: a shorter page than asked is fine, next_offset says where to go on.
    limit = min(limit, LOG_LIMIT_MAX)
    data = logs.read(cfg.logs_dir, job_id, offset, limit, cap)
    if query.raw:
        headers = {
            "X-Flashpods-Next-Offset": str(offset + len(data)),
            "X-Flashpods-Final": str(final).lower(),
        }
        return Response(data, mimetype="application/octet-stream", headers=headers)
    more = len(data) == limit  # there may be more bytes after this slice
    data = logs.trim_utf8(data) if more else data
    return jsonify(
        {
            "job_id": job_id,
            "status": job["status"],
            "offset": offset,
            "next_offset": offset + len(data),
            "data": data.decode("utf-8", "replace"),
            "final": final and not more,
        }
    )


def _wait_for_output(
    store: Store, cfg: Config, job: dict[str, Any], offset: int, cap: int, wait_s: float
) -> dict[str, Any]:
    """The job's row once there are bytes past `offset` or it is final (or after wait_s);
    at once when this worker has no waiting slot free (waiting.budget)."""
    job_id = job["id"]
    latest = job

    def ready() -> bool:
        nonlocal latest
        # Status before data: a job seen final has written its last byte already.
        latest = store.get_job(job_id) or latest
        if latest["status"] in FINAL:
            return True
        return bool(logs.read(cfg.logs_dir, job_id, offset, 1, cap))

    with waiting.slot() as may_wait:
        if may_wait:
            live = logs.ctr_log_path(cfg.logs_dir, job_id)
            waiting.until(ready, wait_s, [store.end_notice, live])
    return latest


def _follow_response(store: Store, cfg: Config, job_id: str, offset: int, cap: int) -> Response:
    """A follower holds a waiting slot for its whole life (429 when none is free)."""
    if not waiting.take():
        raise ApiError(
            429,
            "too_many_waiting",
            "This host has as many waiting requests as it allows; poll the log with "
            "offset (and wait_s) instead, or follow again shortly.",
        )
    held = waiting.Held()
    response = Response(
        _follow(store, cfg, job_id, offset, cap, held), mimetype="application/octet-stream"
    )
    response.call_on_close(held)
    return response


def _follow(
    store: Store, cfg: Config, job_id: str, offset: int, cap: int, held: waiting.Held
) -> Iterator[bytes]:
    try:
        yield from _follow_stream(store, cfg, job_id, offset, cap)
    finally:
        held()


def _follow_stream(
    store: Store, cfg: Config, job_id: str, offset: int, cap: int
) -> Iterator[bytes]:
    follower = logs.Follower(cfg.logs_dir, job_id, offset, cap)
    # gunicorn sends the status line with the first write: an empty one answers at once,
    # so a client of a still silent job is not left waiting for headers.
    yield b""
    with FileWatch() as watch:
        try:
            while True:
                # Watch before reading, so a write right after the read still wakes us;
                # the end notice wakes us when the job ends (no write announces that).
                watch.watch(follower.live_path)
                watch.watch(store.end_notice)
                # Status before data: a job seen final has written its last byte already.
                job = store.get_job(job_id)
                final = job is None or job["status"] in FINAL
                while data := follower.read(FOLLOW_CHUNK):
                    watch.changed()
                    yield data
                if final:
                    return
                watch.wait(FOLLOW_RECHECK_S)
        finally:
            follower.close()
