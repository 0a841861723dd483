"""The one error type routes raise: it becomes JSON `{error, code}` with its HTTP status."""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from .runtime import PodmanError

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def bad_request(code: str, message: str) -> ApiError:
    return ApiError(400, code, message)


def not_found(code: str, message: str) -> ApiError:
    return ApiError(404, code, message)


def conflict(code: str, message: str) -> ApiError:
    return ApiError(409, code, message)


def register_handlers(app: Flask, max_body: int) -> None:
    """Every error leaves the API as JSON {error, code}: ours, Podman's, HTTP's, a bug's."""

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> tuple[Response, int]:
        return jsonify({"error": exc.message, "code": exc.code}), exc.status

    @app.errorhandler(PodmanError)
    def _podman_error(exc: PodmanError) -> tuple[Response, int]:
        return jsonify(
            {
                "error": f"Podman is not answering ({exc}); try again shortly.",
                "code": "podman_unavailable",
            }
        ), 503

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> tuple[Response, int]:
        messages = {
            404: f"No such route {request.method} {request.path}; see GET /openapi.json.",
            405: f"{request.method} is not allowed on {request.path}; see GET /openapi.json.",
            413: f"The request body is larger than {max_body} bytes; send a smaller one "
            "(files go through rsync).",
        }
        code = (exc.name or "error").lower().replace(" ", "_")
        message = messages.get(exc.code or 0, f"{exc.name}: {exc.description}")
        return jsonify({"error": message, "code": code}), exc.code or 500

    @app.errorhandler(Exception)
    def _internal(exc: Exception) -> tuple[Response, int]:
        log.exception("internal error on %s %s", request.method, request.path)
        return jsonify(
            {
                "error": "Flashpods hit an internal error; the API log has details.",
                "code": "internal_error",
            }
        ), 500
