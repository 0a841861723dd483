"""Entry points: `flashpods-api` (gunicorn around the app factory) and `flashpods-reaper`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from .config import CONFIG_ENV, ConfigError, load

# Threads hold long polls (logs?follow=1) cheaply: an idle follower is one sleeping thread.
THREADS = 64


def api_main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="flashpods-api", description="Run the Flashpods HTTP API under gunicorn."
    )
    parser.add_argument(
        "--bind", default="127.0.0.1:8080", help="HOST:PORT to listen on (default %(default)s)"
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="gunicorn worker processes (default %(default)s)"
    )
    parser.add_argument(
        "--threads", type=int, default=THREADS, help="threads per worker (default %(default)s)"
    )
    parser.add_argument("--config", help=f"the API configuration JSON (default: ${CONFIG_ENV})")
    args = parser.parse_args(argv)
    if args.config:
        os.environ[CONFIG_ENV] = os.path.abspath(args.config)
    try:
        load()  # fail here, with the reason, rather than in every worker
    except ConfigError as exc:
        sys.exit(f"flashpods-api: {exc}")

    from gunicorn.app.base import BaseApplication

    class _Gunicorn(BaseApplication):  # type: ignore[misc]  # gunicorn ships no types
        def load_config(self) -> None:
            options: dict[str, Any] = {
                "bind": args.bind,
                "workers": args.workers,
                "worker_class": "gthread",
                "threads": args.threads,
                "timeout": 60,
                "graceful_timeout": 10,
                "accesslog": "-",
                "errorlog": "-",
            }
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            from .app import create_app

            return create_app()

    _Gunicorn().run()


def reaper_main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="flashpods-reaper", description="Run the Flashpods reaper (one per host)."
    )
    parser.add_argument("--config", help=f"the API configuration JSON (default: ${CONFIG_ENV})")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s flashpods-reaper %(levelname)s %(message)s"
    )
    try:
        config = load(args.config)
    except ConfigError as exc:
        sys.exit(f"flashpods-reaper: {exc}")

    from .jobs import Engine, default_registrar
    from .reaper import Reaper, hold_lock, install_signal_handlers
    from .runtime import Runtime
    from .store import Store

    lock = hold_lock(config.db_path)
    store = Store(config.db_path, config.instance)
    runtime = Runtime(config.podman_url, config.instance, create_lock=config.create_lock_path)
    engine = Engine(config, store, runtime, default_registrar(config))
    reaper = Reaper(engine)
    install_signal_handlers(reaper)
    logging.getLogger(__name__).info("reaper started for instance %s", config.instance)
    try:
        reaper.run_forever()
    finally:
        os.close(lock)
