"""The Flashpods HTTP API: a Flask application factory (docs/api.md).

`create_app` only wires: config, store, runtime, engine, the token check and the error
handlers; the routes are blueprints in routes/ that find the Engine in
`app.extensions`. Gunicorn runs `flashpods_api.app:create_app()` with threaded
workers; nothing here starts a background loop (the reaper is its own process), so any
number of workers is safe.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, request

from . import auth, errors, health, routes
from .config import Config, from_dict, load
from .jobs import Engine, default_registrar
from .registrar import Registrar
from .routes.meta import PODMAN_PROBE
from .runtime import Runtime
from .store import Store

MAX_BODY = 1024 * 1024


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
    # The credential proxy's per-job model usage, shown with each job (job_json.public).
    app.config["FLASHPODS_USAGE_DIR"] = cfg.raw["storage"].get("usage")
    app.url_map.merge_slashes = False  # "a//b" is a bad artifact path, not a redirect
    app.json.sort_keys = False  # type: ignore[attr-defined]
    store = store or Store(cfg.db_path, cfg.instance)
    runtime = runtime or Runtime(cfg.podman_url, cfg.instance, create_lock=cfg.create_lock_path)
    engine = Engine(cfg, store, runtime, registrar or default_registrar(cfg))
    app.extensions[routes.EXTENSION] = engine
    app.extensions[PODMAN_PROBE] = health.PodmanProbe(
        store, runtime, float(cfg.reaper["interval_s"])
    )
    token = auth.read_token(cfg.token_file)

    @app.before_request
    def _authenticate() -> None:
        if request.endpoint == "meta.healthz":
            return
        auth.check(
            request.headers.get("Authorization"), token, request.remote_addr, cfg.allowed_peers
        )

    for blueprint in routes.blueprints():
        app.register_blueprint(blueprint)
    errors.register_handlers(app, MAX_BODY)
    return app
