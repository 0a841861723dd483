"""`flashpods-token`: start the token exchange service from FLASHPODS_TOKEN_CONFIG."""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType

from .app import build_server
from .config import ConfigError, load_config


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print("usage: flashpods-token [CONFIG.json]  (default: $FLASHPODS_TOKEN_CONFIG)")
        return 0
    try:
        config = load_config(argv[0] if argv else None)
    except ConfigError as exc:
        print(f"flashpods-token: {exc}", file=sys.stderr)
        return 2
    stopping = threading.Event()
    server = None

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()
        if server is not None:
            threading.Thread(target=server.shutdown, daemon=True).start()

    # Before the socket exists: a SIGTERM right after it appears still stops cleanly.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server, cleanup = build_server(config)
    # Log rotation: rename the audit log, then SIGHUP; no line is lost in between.
    signal.signal(signal.SIGHUP, lambda signum, frame: server.service.reopen_audit())
    if stopping.is_set():
        server.server_close()
        cleanup()
        return 0
    print(
        f"flashpods-token: {config.mode} mode, listening on {config.socket}",
        file=sys.stderr,
        flush=True,
    )
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
