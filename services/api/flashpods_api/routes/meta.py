"""What the API says about itself: GET /healthz (no token needed) and GET /openapi.json."""

from __future__ import annotations

from importlib import resources

from flask import Blueprint, Response, current_app, jsonify

from .. import health
from . import engine

bp = Blueprint("meta", __name__)

PODMAN_PROBE = "flashpods.podman_probe"  # the app's health.PodmanProbe, in app.extensions


@bp.get("/healthz")
def healthz() -> Response | tuple[Response, int]:
    eng = engine()
    probe = current_app.extensions[PODMAN_PROBE]
    checks = health.checks(eng.store, probe, eng.config, eng)
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


@bp.get("/openapi.json")
def openapi() -> Response:
    return Response(openapi_text(), mimetype="application/json")


def openapi_text() -> str:
    return resources.files("flashpods_api").joinpath("openapi.json").read_text()
