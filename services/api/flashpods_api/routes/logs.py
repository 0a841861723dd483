"""GET /jobs/<id>/logs: a page of a job's log as JSON or raw bytes, or a live follow."""

from __future__ import annotations

from collections.abc import Iterator

from flask import Blueprint, Response, jsonify, request

from .. import logs, validate
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
# A follower wakes on every write to the live log (inotify) and looks at the job's
# status at least this often, so it notices the end even if no write announces it.
FOLLOW_RECHECK_S = 0.5
FOLLOW_CHUNK = 256 * 1024


@bp.get("/jobs/<job_id>/logs")
def job_logs(job_id: str) -> Response:
    job = known_job(job_id)
    query = validate.logs_query(request.args, LOG_LIMIT_DEFAULT, RAW_FINAL_LIMIT_MAX)
    if job["logs_deleted"]:
        raise ApiError(
            410, "logs_expired", f"The log of {job_id} was deleted after the retention period."
        )
    eng = engine()
    cfg = eng.config
    cap = cfg.limits["log_bytes"]
    offset, limit = query.offset, query.limit
    if query.follow:
        return Response(
            _follow(eng.store, cfg, job_id, offset, cap), mimetype="application/octet-stream"
        )
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


def _follow(store: Store, cfg: Config, job_id: str, offset: int, cap: int) -> Iterator[bytes]:
    follower = logs.Follower(cfg.logs_dir, job_id, offset, cap)
    # gunicorn sends the status line with the first write: an empty one answers at once,
    # so a client of a still silent job is not left waiting for headers.
    yield b""
    with FileWatch() as watch:
        try:
            while True:
                # Watch before reading, so a write right after the read still wakes us.
                watch.watch(follower.live_path)
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
