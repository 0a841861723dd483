"""Put a file's bytes on the client's socket by sendfile, in the middle of a streamed body.

gunicorn sends a body by sendfile only when the whole response is one file
(`wsgi.file_wrapper`). artifacts.tar is many files with tar headers between them: read
through Python, every MiB costs a read and a write copy, and the stream ran at about half
the throughput of a bare loopback copy (docs/benchmarks.md, P5b).

gunicorn hands the application the connection as `environ["gunicorn.socket"]`, and it
writes each item a response iterable yields, in order and before asking for the next. So
a generator may send a member's bytes on that socket itself between two yields and they
land exactly where the tar header says. That holds only for a plain-HTTP GET whose length
is announced in Content-Length (no chunked framing to keep, no TLS layer to bypass) on
gunicorn's blocking connection socket; `socket_sender` returns None everywhere else and
callers read the file through Python as before.

The one visible difference: gunicorn's access log counts only the bytes it wrote itself.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping
from typing import Any

# (fd, count) -> bytes sent; fewer than count only when the file ended first.
SendFile = Callable[[int, int], int]


def socket_sender(environ: Mapping[str, Any]) -> SendFile | None:
    """A sendfile into this request's connection, or None where that would be unsafe."""
    sock = environ.get("gunicorn.socket")
    if (
        type(sock) is not socket.socket  # an ssl.SSLSocket is a subclass: not that
        or environ.get("REQUEST_METHOD") != "GET"
        or environ.get("wsgi.url_scheme") != "http"
        or sock.gettimeout() == 0.0  # socket.sendfile refuses non-blocking sockets
    ):
        return None

    out = sock.fileno()
    if sock.gettimeout() is None:
        # A blocking socket (gunicorn's gthread worker): os.sendfile waits for room
        # itself, so one call per member does, without socket.sendfile's per-call
        # selector and file object (a tar of many small files pays those per member).
        def send(fd: int, count: int) -> int:
            sent = 0
            while sent < count:
                n = os.sendfile(out, fd, sent, count - sent)
                if n == 0:
                    break  # the file ended early (it shrank since the plan): caller pads
                sent += n
            return sent

        return send

    def send_with_timeout(fd: int, count: int) -> int:
        # socket.sendfile loops over os.sendfile and waits out the socket's timeout; it
        # stops early only when the file ends.
        with os.fdopen(fd, "rb", closefd=False) as fh:
            return sock.sendfile(fh, 0, count) if count else 0

    return send_with_timeout
