"""HTTP/1.1 over a unix socket, and nothing else: there is no TCP listener, ever.

Why the standard library (socketserver + http.server) and not Flask/werkzeug: the
service must read SO_PEERPIDFD from the accepted socket before trusting anything,
cap header and body bytes, bound each connection's total read time, and refuse
connections beyond a limit. Those hooks are direct here, the surface is one route,
and it adds no dependency to the process that holds every secret.
"""

from __future__ import annotations

import contextlib
import grp
import os
import socket
import socketserver
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler

from .config import Limits
from .exchange import Reply, TokenService, error

EXCHANGE_PATH = "/v1/exchange"


class _TooLarge(Exception):
    pass


class _TooSlow(Exception):
    pass


class _CappedReader:
    """Wraps the connection's reader: at most `budget` bytes and until `deadline`."""

    def __init__(self, raw, budget: int, deadline: float):
        self._raw = raw
        self.budget = budget
        self._deadline = deadline

    def _check(self, data: bytes) -> bytes:
        self.budget -= len(data)
        if self.budget < 0:
            raise _TooLarge()
        if time.monotonic() > self._deadline:
            raise _TooSlow()
        return data

    def readline(self, limit: int = -1) -> bytes:
        cap = self.budget + 1 if limit < 0 else min(limit, self.budget + 1)
        return self._check(self._raw.readline(cap))

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            raise _TooLarge()  # never read to EOF on a caller's say-so
        return self._check(self._raw.read(min(n, self.budget + 1)))

    def close(self) -> None:
        self._raw.close()


class ExchangeHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Answer even malformed/HTTP-0.9 requests with a status line and JSON.
    default_request_version = "HTTP/1.1"

    def version_string(self) -> str:
        return "flashpods-token"

    def setup(self) -> None:
        self.timeout = self.server.limits.read_timeout_s
        super().setup()
        limits: Limits = self.server.limits
        self._deadline = time.monotonic() + 2 * limits.read_timeout_s
        self._raw_rfile = self.rfile
        self.rfile = _CappedReader(self._raw_rfile, limits.max_header_bytes, self._deadline)

    def handle(self) -> None:
        # One request per connection: attestation belongs to the connection, and
        # the helper makes exactly one call.
        self.close_connection = True
        try:
            self.handle_one_request()
        except _TooLarge:
            self._reply(error(431, "too_large", "request headers too large"))
        except (_TooSlow, TimeoutError):
            self._reply(error(408, "timeout", "request not received in time"))
        except (ConnectionError, OSError):
            pass

    def log_message(self, format, *args) -> None:  # noqa: A002 - stdlib signature
        pass  # every exchange goes to the audit log instead; nothing else is logged

    def send_error(self, code, message=None, explain=None) -> None:
        # Malformed request lines etc.: answer JSON, never echo the caller's bytes.
        self._reply(error(code, "bad_request", "malformed HTTP request"))

    def _reply(self, reply: Reply) -> None:
        data, ctype = reply.payload()
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("Connection", "close")
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
        except OSError:
            pass

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._reply(Reply(200, {"ok": True, "mode": self.server.service.mode}))
        else:
            self._reply(error(404, "not_found", f"only POST {EXCHANGE_PATH} exists"))

    def do_POST(self) -> None:
        if self.path != EXCHANGE_PATH:
            self._reply(error(404, "not_found", f"only POST {EXCHANGE_PATH} exists"))
            return
        limits: Limits = self.server.limits
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            self._reply(error(411, "length_required", "send the body with Content-Length"))
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0:
            self._reply(error(400, "bad_request", "invalid Content-Length"))
            return
        if length > limits.max_body_bytes:
            self._reply(error(413, "too_large", f"body over {limits.max_body_bytes} bytes"))
            return
        self.rfile.budget = length
        body = self.rfile.read(length) if length else b""
        if len(body) != length:
            self._reply(error(400, "bad_request", "body shorter than Content-Length"))
            return
        accept = (self.headers.get("Accept") or "").lower()
        reply = self.server.service.exchange(
            connection=self.connection,
            authorization=self.headers.get("Authorization"),
            body=body,
            text="text/plain" in accept,
        )
        self._reply(reply)

    def do_PUT(self) -> None:
        self._reply(error(405, "method_not_allowed", f"only POST {EXCHANGE_PATH} exists"))

    do_DELETE = do_PATCH = do_HEAD = do_PUT


class TokenServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    allow_reuse_address = False

    def __init__(self, path: str, service: TokenService, limits: Limits, group: str | None):
        self.service = service
        self.limits = limits
        self._group = group
        self._active = 0
        self._active_lock = threading.Lock()
        self._ino: int | None = None
        super().__init__(path, ExchangeHandler, bind_and_activate=True)

    def server_bind(self) -> None:
        """Bind in a private directory, set owner/group/mode, then rename into place,
        so the socket is never reachable with looser permissions than 0660."""
        path = self.server_address
        parent = os.path.dirname(os.path.abspath(path))
        if os.path.exists(path):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(path)
            except OSError:
                pass  # stale socket of a dead service: replace it below
            else:
                raise SystemExit(f"flashpods-token: another service is listening on {path}")
            finally:
                probe.close()
        gid = -1
        if self._group:
            try:
                gid = grp.getgrnam(self._group).gr_gid
            except KeyError:
                raise SystemExit(
                    f"flashpods-token: socket_group {self._group!r} does not exist"
                ) from None
        private = tempfile.mkdtemp(prefix=".token-sock-", dir=parent)
        try:
            tmp_path = os.path.join(private, "s")
            self.socket.bind(tmp_path)
            if gid != -1:
                try:
                    os.chown(tmp_path, -1, gid)
                except PermissionError:
                    raise SystemExit(
                        f"flashpods-token: cannot give the socket group {self._group}: "
                        "the service user must be a member of it"
                    ) from None
            os.chmod(tmp_path, 0o660)
            # Listen before the socket becomes visible: whoever sees the path can connect.
            self.socket.listen(self.request_queue_size)
            os.rename(tmp_path, path)
        finally:
            with contextlib.suppress(OSError):
                os.rmdir(private)
        self._ino = os.stat(path).st_ino
        self.server_address = path

    def server_activate(self) -> None:
        pass  # already listening: server_bind listens before it renames into place

    def process_request(self, request, client_address) -> None:
        with self._active_lock:
            if self._active >= self.limits.max_connections:
                over = True
            else:
                over = False
                self._active += 1
        if over:
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._active_lock:
                self._active -= 1

    def server_close(self) -> None:
        super().server_close()
        try:
            if self._ino is not None and os.stat(self.server_address).st_ino == self._ino:
                os.unlink(self.server_address)
        except OSError:
            pass
