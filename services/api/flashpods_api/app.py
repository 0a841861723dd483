"""The Flashpods HTTP API: a Flask application factory and its routes (docs/api.md).

Gunicorn runs `flashpods_api.app:create_app()` with threaded workers; nothing here starts
a background loop (the reaper is its own process), so any number of workers is safe.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from flask import Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from . import artifacts, auth, health, ids, logs, validate
from .config import Config, from_dict, load
from .errors import ApiError, bad_request, conflict, not_found
from .filewatch import FileWatch
from .jobs import DIR_MODE, Engine, Registrar, default_registrar
from .runtime import PodmanError, Runtime
from .store import FINAL, KINDS, STATUSES, QueueFull, Store, UploadUnavailable
from .usage import read_usage

log = logging.getLogger(__name__)

MAX_BODY = 1024 * 1024
LOG_LIMIT_DEFAULT = 1024 * 1024
LOG_LIMIT_MAX = 8 * 1024 * 1024
# A finished job's raw log goes out by sendfile, never through memory, so a client may ask
# for the whole log in one page; anything read into memory stays capped at LOG_LIMIT_MAX.
RAW_FINAL_LIMIT_MAX = 1024 * 1024 * 1024
# A follower wakes on every write to the live log (inotify) and looks at the job's
# status at least this often, so it notices the end even if no write announces it.
FOLLOW_RECHECK_S = 0.5
FOLLOW_CHUNK = 256 * 1024
FILE_BLOCK = 1024 * 1024
_TIMES = (
    "created_at",
    "claimed_at",
    "started_at",
    "finished_at",
    "artifacts_expire_at",
    "logs_expire_at",
)
_PUBLIC = (
    "id", "kind", "status", "command", "prompt", "image", "env", "upload_id", "timeout_s",
    "resources", "artifacts_glob", "exit_code", "error", "log_bytes", "instance",
    "limits_not_applied", "workspace_changes",
)  # fmt: skip


def create_app(
    config: Config | dict[str, Any] | None = None,
    *,
    store: Store | None = None,
    runtime: Runtime | None = None,
    registrar: Registrar | None = None,
) -> Flask:
    cfg = (
        config
        if isinstance(config, Config)
        else from_dict(config)
        if config is not None
        else load()
    )
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    app.config["FLASHPODS_USAGE_DIR"] = cfg.raw["storage"].get("usage")
    app.url_map.merge_slashes = False  # "a//b" is a bad artifact path, not a redirect
    app.json.sort_keys = False  # type: ignore[attr-defined]
    store = store or Store(cfg.db_path, cfg.instance)
    runtime = runtime or Runtime(cfg.podman_url, cfg.instance, create_lock=cfg.create_lock_path)
    engine = Engine(cfg, store, runtime, registrar or default_registrar(cfg))
    podman_probe = health.PodmanProbe(store, runtime, float(cfg.reaper["interval_s"]))
    token = auth.read_token(cfg.token_file)
    app.extensions["flashpods"] = engine
    _register_errors(app)

    @app.before_request
    def _authenticate() -> None:
        if request.endpoint == "healthz":
            return
        auth.check(
            request.headers.get("Authorization"), token, request.remote_addr, cfg.allowed_peers
        )

    @app.post("/uploads")
    def create_upload() -> Any:
        body = _json_body(optional=True)
        if not isinstance(body, dict) or set(body) - {"basis"}:
            raise bad_request(
                "bad_json", 'The body must be empty or {"basis": "<previous upload_id>"}.'
            )
        basis = body.get("basis")
        if basis is not None and not ids.is_upload_id(basis):
            raise bad_request(
                "bad_basis",
                "'basis' must be an upload id (up_ + 16 characters) used by an earlier job.",
            )
        link_dest = None
        if basis:
            previous = store.get_upload(basis)
            if (
                previous
                and previous["state"] == "used"
                and not previous["base_deleted"]
                and engine.base_dir(basis).is_dir()
            ):
                link_dest = f"../.bases/{basis}/"
            else:
                basis = None  # no usable base: an ordinary full upload
        upload_id = ids.new_upload_id()
        cfg.uploads_dir.mkdir(parents=True, exist_ok=True)
        path = engine.upload_dir(upload_id)
        path.mkdir()
        os.chmod(path, DIR_MODE)
        store.add_upload(upload_id, basis)
        answer = {"upload_id": upload_id, "rsync_url": f"{cfg.rsync_url.rstrip('/')}/{upload_id}/"}
        if link_dest:
            answer["link_dest"] = link_dest
        return jsonify(answer), 201

    @app.post("/jobs")
    def create_job() -> Any:
        record = validate.job_request(_json_body(), cfg)
        if record["upload_id"]:
            _check_upload(record["upload_id"])
        record["id"] = ids.new_job_id()
        try:
            job, warm = store.submit(
                record,
                cfg.queue_limit,
                claim_cap=cfg.max_concurrent_jobs,
                warm=engine.warm.wanted(record),
            )
        except (QueueFull, UploadUnavailable) as exc:
            raise _create_error(exc, record) from None
        if job["status"] == "starting":  # claimed in the same transaction: start it now
            engine.start_claimed(job["id"], warm=warm, job=job)
        return jsonify({"job": _public(store, store.get_job(job["id"]))}), 201

    def _create_error(exc: Exception, record: dict[str, Any]) -> ApiError:
        if isinstance(exc, UploadUnavailable):
            return _upload_error(record["upload_id"], exc.reason)
        return ApiError(
            429,
            "queue_full",
            f"The queue holds {cfg.queue_limit} jobs already; wait for some to finish and retry.",
        )

    def _check_upload(upload_id: str) -> None:
        upload = store.get_upload(upload_id)
        if upload is None or upload["state"] != "reserved":
            raise _upload_error(upload_id, "unknown" if upload is None else upload["state"])
        seen = artifacts.measure(engine.upload_dir(upload_id))
        if seen.limit:
            raise ApiError(
                413,
                "upload_too_large",
                f"The upload holds {seen.limit}, more than this host walks; "
                "upload a smaller, shallower tree.",
            )
        size = seen.bytes
        if size > cfg.limits["upload_bytes"]:
            raise ApiError(
                413,
                "upload_too_large",
                f"The upload holds {size} bytes, more than this host's limit of "
                f"{cfg.limits['upload_bytes']}; "
                "upload fewer files.",
            )

    @app.get("/jobs")
    def list_jobs() -> Any:
        status = request.args.get("status")
        if status is not None and status not in STATUSES:
            raise bad_request("bad_status", f"'status' must be one of {', '.join(STATUSES)}.")
        kind = request.args.get("kind")
        if kind is not None and kind not in KINDS:
            raise bad_request("bad_kind", "'kind' must be worker or sub_agent.")
        limit = validate.query_int(request.args, "limit", 50, 1, 500)
        cursor = request.args.get("cursor")
        before = None
        if cursor is not None:
            if not cursor.isascii() or not cursor.isdigit() or len(cursor) > 18:
                raise bad_request(
                    "bad_cursor", "'cursor' must be the next_cursor value of a previous GET /jobs."
                )
            before = int(cursor)
        rows = store.list_jobs(status, kind, limit, before)
        next_cursor = str(rows[-1]["seq"]) if len(rows) == limit else None
        return jsonify({"jobs": [_public(store, r) for r in rows], "next_cursor": next_cursor})

    def _job(job_id: str) -> dict[str, Any]:
        validate.job_id(job_id)
        job = store.get_job(job_id)
        if job is None:
            raise not_found(
                "unknown_job", f"There is no job {job_id} on this host; list jobs with GET /jobs."
            )
        return job

    @app.get("/jobs/<job_id>")
    def get_job(job_id: str) -> Any:
        return jsonify({"job": _public(store, _job(job_id))})

    @app.post("/jobs/<job_id>/kill")
    def kill_job(job_id: str) -> Any:
        _job(job_id)
        return jsonify({"job": _public(store, engine.kill(job_id))})

    @app.get("/jobs/<job_id>/logs")
    def job_logs(job_id: str) -> Any:
        job = _job(job_id)
        offset = validate.query_int(request.args, "offset", 0, 0, 2**62)
        limit = validate.query_int(request.args, "limit", LOG_LIMIT_DEFAULT, 1, RAW_FINAL_LIMIT_MAX)
        follow = request.args.get("follow", "0")
        if follow not in ("0", "1"):
            raise bad_request("bad_follow", "'follow' must be 0 or 1.")
        if request.args.get("format", "json") not in ("json", "raw"):
            raise bad_request("bad_format", "'format' must be json (the default) or raw.")
        if job["logs_deleted"]:
            raise ApiError(
                410, "logs_expired", f"The log of {job_id} was deleted after the retention period."
            )
        cap = cfg.limits["log_bytes"]
        if follow == "1":
            return Response(
                _follow(store, cfg, job_id, offset, cap), mimetype="application/octet-stream"
            )
        final = job["status"] in FINAL
        raw = request.args.get("format") == "raw"
        if raw and (opened := logs.open_final(cfg.logs_dir, job_id, offset, limit)):
            fh, length = opened
            headers = {
                "X-Flashpods-Next-Offset": str(offset + length),
                "X-Flashpods-Final": str(final).lower(),
            }
            return _file_response(fh, length, headers)
        # Read into memory: a shorter page than asked is fine, next_offset says where to go on.
        limit = min(limit, LOG_LIMIT_MAX)
        data = logs.read(cfg.logs_dir, job_id, offset, limit, cap)
        if raw:
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

    def _artifacts_job(job_id: str) -> dict[str, Any]:
        job = _job(job_id)
        if job["artifacts_deleted"]:
            raise ApiError(
                410,
                "artifacts_expired",
                f"The artifacts of {job_id} were deleted after the retention period.",
            )
        return job

    @app.get("/jobs/<job_id>/artifacts")
    def list_artifacts(job_id: str) -> Any:
        job = _artifacts_job(job_id)
        files, skipped = artifacts.listing(cfg.artifacts_dir, job_id, job["artifacts_glob"])
        return jsonify(
            {"job_id": job_id, "status": job["status"], "artifacts": files, "skipped": skipped}
        )

    @app.get("/jobs/<job_id>/artifacts.tar")
    def artifacts_tar(job_id: str) -> Any:
        job = _artifacts_job(job_id)
        members, length = artifacts.tar_plan(cfg.artifacts_dir, job_id, job["artifacts_glob"])
        headers = {
            "Content-Disposition": f'attachment; filename="{job_id}-artifacts.tar"',
            "Content-Length": str(length),
        }
        stream = artifacts.stream_tar(members)
        return Response(
            stream, mimetype="application/x-tar", headers=headers, direct_passthrough=True
        )

    @app.get("/jobs/<job_id>/artifacts/<path:path>")
    def artifact_file(job_id: str, path: str) -> Any:
        _artifacts_job(job_id)
        if not artifacts.valid_relpath(path):
            raise bad_request(
                "bad_path",
                "Artifact paths are relative, without '.', '..', empty parts or NUL bytes.",
            )
        try:
            root, rel = artifacts.resolve(cfg.artifacts_dir, job_id, path)
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
        return _file_response(os.fdopen(fd, "rb"), size)

    @app.get("/healthz")
    def healthz() -> Any:
        checks = health.checks(store, podman_probe, cfg, engine)
        failing = [name for name, check in checks.items() if not check["ok"]]
        if failing:
            body = {
                "ok": False,
                "error": "Unhealthy: "
                + "; ".join(f"{n}: {checks[n]['detail']}" for n in failing)
                + ".",
                "code": "unhealthy",
                "failing": failing,
                "checks": checks,
            }
            return jsonify(body), 503
        return jsonify({"ok": True, "checks": checks})

    @app.get("/openapi.json")
    def openapi() -> Any:
        return Response(openapi_text(), mimetype="application/json")

    return app


def openapi_text() -> str:
    return resources.files("flashpods_api").joinpath("openapi.json").read_text()


def _json_body(optional: bool = False) -> Any:
    """The parsed JSON body; no body at all is {} when `optional` (JSON null is no object).

    A body of whitespace alone is not JSON (a JSON text holds a value) and is refused like
    any other bad body: the fuzzer counted a tab accepted as a schema violation."""
    raw = request.get_data(cache=False)
    if not raw:
        if optional:
            return {}
        raise bad_request("bad_json", "The request needs a JSON body.")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise bad_request(
            "bad_json", "The request body is not valid JSON; send a JSON object."
        ) from None


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


def _iso(value: float | None) -> str | None:
    if value is None:
        return None
    return (
        datetime.fromtimestamp(value, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def _public(store: Store, job: dict[str, Any] | None) -> dict[str, Any]:
    assert job is not None
    out = {key: job.get(key) for key in _PUBLIC}
    for key in _TIMES:
        out[key] = _iso(job.get(key))
    out["log_capped"] = bool(job.get("log_capped"))
    out["stop_requested"] = job.get("stop_requested_at") is not None
    out["artifacts_available"] = not job.get("artifacts_deleted")
    out["logs_available"] = not job.get("logs_deleted")
    if job["status"] == "queued":
        out["queue_position"] = store.queue_position(job)
    usage_dir = current_app.config.get("FLASHPODS_USAGE_DIR")
    if usage_dir:  # the credential proxy's metering (docs/token.md)
        out["usage"] = read_usage(usage_dir, job["id"])
    return out


def _file_response(fh: Any, length: int, headers: dict[str, str] | None = None) -> Response:
    """`length` bytes of an open file from its position, by sendfile where the server can.

    gunicorn's wsgi.file_wrapper goes to os.sendfile with count = Content-Length (the
    bytes never pass through Python); elsewhere the body is read in large blocks.
    """
    wrapper = request.environ.get("wsgi.file_wrapper")
    body = wrapper(fh, FILE_BLOCK) if wrapper else _read_exactly(fh, length)
    return Response(
        body,
        mimetype="application/octet-stream",
        headers={"Content-Length": str(length), **(headers or {})},
        direct_passthrough=True,
    )


def _read_exactly(fh: Any, length: int) -> Any:
    with fh:
        while length > 0 and (block := fh.read(min(FILE_BLOCK, length))):
            length -= len(block)
            yield block


def _follow(store: Store, cfg: Config, job_id: str, offset: int, cap: int) -> Any:
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


def _register_errors(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Any:
        return jsonify({"error": exc.message, "code": exc.code}), exc.status

    @app.errorhandler(PodmanError)
    def _podman_error(exc: PodmanError) -> Any:
        return jsonify(
            {
                "error": f"Podman is not answering ({exc}); try again shortly.",
                "code": "podman_unavailable",
            }
        ), 503

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Any:
        messages = {
            404: f"No such route {request.method} {request.path}; see GET /openapi.json.",
            405: f"{request.method} is not allowed on {request.path}; see GET /openapi.json.",
            413: f"The request body is larger than {MAX_BODY} bytes; send a smaller one "
            "(files go through rsync).",
        }
        code = (exc.name or "error").lower().replace(" ", "_")
        message = messages.get(exc.code or 0, f"{exc.name}: {exc.description}")
        return jsonify({"error": message, "code": code}), exc.code or 500

    @app.errorhandler(Exception)
    def _internal(exc: Exception) -> Any:
        log.exception("internal error on %s %s", request.method, request.path)
        return jsonify(
            {
                "error": "Flashpods hit an internal error; the API log has details.",
                "code": "internal_error",
            }
        ), 500
