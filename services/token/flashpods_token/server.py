"""HTTP/1.1 over a unix socket, and nothing else: there is no TCP listener, ever.

Why the standard library (socketserver + http.server) and not Flask/werkzeug: the
service must read SO_PEERPIDFD from the accepted socket before trusting anything,
cap header and body bytes, hold each connection to a hard deadline, and refuse
connections beyond a global and a per-job limit before a thread is spent on them.
Those hooks are direct here, the surface is one route, and it adds no dependency to
the process that holds every secret.
"""

from __future__ import annotations

import contextlib
import grp
import io
import json
import os
import secrets
import socket
import socketserver
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any, cast

from .config import Limits
from .exchange import Reply, TokenService, error
from .peer_key import PeerKeys

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

EXCHANGE_PATH = "/v1/exchange"


class _TooLarge(Exception):
    pass


class _TooSlow(Exception):
    """The request did not arrive by the connection's deadline (not a TimeoutError: the
    stdlib handler swallows those without answering)."""


class _DeadlineReader(io.RawIOBase):
    """The connection's bytes, never past its deadline.

    Every receive waits at most until the deadline, so a client that trickles a byte now
    and then cannot stretch the connection: the deadline is hard, not checked after a
    read returns."""

    def __init__(self, sock: socket.socket, deadline: float, per_read_s: float) -> None:
        self._sock = sock
        self._deadline = deadline
        self._per_read_s = per_read_s

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise _TooSlow()
        self._sock.settimeout(min(self._per_read_s, remaining))
        try:
            return self._sock.recv_into(buffer)
        except TimeoutError:
            if time.monotonic() >= self._deadline:
                raise _TooSlow() from None
            raise


class _CappedReader:
    """Wraps the connection's reader: at most `budget` bytes."""

    def __init__(self, raw: io.BufferedReader, budget: int) -> None:
        self._raw = raw
        self.budget = budget

    def _check(self, data: bytes) -> bytes:
        self.budget -= len(data)
        if self.budget < 0:
            raise _TooLarge()
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


def _refusal(status: int, code: str, message: str) -> bytes:
    body = json.dumps({"error": message, "code": code}).encode() + b"\n"
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Retry-After: 1\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


# Sent by the accepting thread, without reading the request: flashpods-init retries these.
BUSY = _refusal(503, "busy", "the token service is busy; retry shortly")
JOB_BUSY = _refusal(
    503, "busy", "this job has too many open connections to the token service; retry shortly"
)


class ExchangeHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Answer even malformed/HTTP-0.9 requests with a status line and JSON.
    default_request_version = "HTTP/1.1"

    server: TokenServer  # what BaseRequestHandler keeps of the server that made it

    def version_string(self) -> str:
        return "flashpods-token"

    def __init__(
        self,
        request: socket.socket,
        client_address: Any,
        server: TokenServer,
        peer_key: str | None = None,
    ) -> None:
        self.peer_key = peer_key
        super().__init__(request, client_address, server)

    def setup(self) -> None:
        limits: Limits = self.server.limits
        self.connection = self.request
        deadline = time.monotonic() + 2 * limits.read_timeout_s
        raw = _DeadlineReader(self.connection, deadline, limits.read_timeout_s)
        self.capped = _CappedReader(io.BufferedReader(raw), limits.max_header_bytes)
        # http.server only calls readline and read on it.
        self.rfile = cast(io.BufferedIOBase, self.capped)
        self.wfile = self.connection.makefile("wb")
        # What an answer needs when the request line itself never arrived (408, 431).
        self.requestline = ""
        self.request_version = self.default_request_version
        self.command = None  # type: ignore[assignment]  # as http.server's parse_request does

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

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # every exchange goes to the audit log instead; nothing else is logged

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # Malformed request lines etc.: answer JSON, never echo the caller's bytes.
        self._reply(error(code, "bad_request", "malformed HTTP request"))

    def _reply(self, reply: Reply) -> None:
        data, ctype = reply.payload()
        try:
            # A caller that does not read its answer holds the connection this long at most.
            self.connection.settimeout(self.server.limits.read_timeout_s)
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
        self.capped.budget = length
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
            peer=self.peer_key,
        )
        self._reply(reply)

    def do_PUT(self) -> None:
        self._reply(error(405, "method_not_allowed", f"only POST {EXCHANGE_PATH} exists"))

    do_DELETE = do_PATCH = do_HEAD = do_PUT


def bind_in_place(sock: socket.socket, path: str, group: str | None, backlog: int) -> int:
    """Bind under a temporary name (mode 0600 from the start), set group and mode, listen,
    then rename over the path, so the socket is never reachable with looser permissions
    than 0660 and never missing while a predecessor's is replaced. Returns its inode.

    Containers mount the socket's directory, not the socket (a file bind mount would keep
    the old inode after a restart), so nothing but sockets of these services is ever
    created there: the temporary name is a dot-name beside it. Also the credential
    proxy's socket (proxy.py)."""
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
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise SystemExit(f"flashpods-token: socket_group {group!r} does not exist") from None
    tmp_path = os.path.join(parent, f".{os.path.basename(path)}.{secrets.token_hex(8)}")
    # bind() creates the node with the process umask: 0600 until it is ready. No other
    # thread creates files yet (the server is not serving).
    old_umask = os.umask(0o177)
    try:
        sock.bind(tmp_path)
    finally:
        os.umask(old_umask)
    try:
        if gid != -1:
            try:
                os.chown(tmp_path, -1, gid)
            except PermissionError:
                raise SystemExit(
                    f"flashpods-token: cannot give the socket group {group}: "
                    "the service user must be a member of it"
                ) from None
        os.chmod(tmp_path, 0o660)
        # Listen before the socket becomes visible: whoever sees the path can connect.
        sock.listen(backlog)
        os.rename(tmp_path, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_path)
        raise
    return os.stat(path).st_ino


class TokenServer(socketserver.UnixStreamServer):
    """One thread per admitted connection; admission is decided in the accepting thread,
    from kernel facts only, so a flood of connections never reaches a handler."""

    allow_reuse_address = False
    request_queue_size = 128

    def __init__(self, path: str, service: TokenService, limits: Limits, group: str | None) -> None:
        self.socket_path = path
        self.service = service
        self.limits = limits
        self._group = group
        self._active = 0
        self._per_job: dict[str | None, int] = {}
        self._active_lock = threading.Lock()
        self._ino: int | None = None
        self._peer_keys = PeerKeys()
        super().__init__(path, ExchangeHandler, bind_and_activate=True)

    def server_bind(self) -> None:
        self._ino = bind_in_place(
            self.socket, self.socket_path, self._group, self.request_queue_size
        )
        self.server_address = self.socket_path

    def server_activate(self) -> None:
        pass  # already listening: server_bind listens before it renames into place

    # A stream server's request is its socket (the base also allows a datagram's tuple).
    def process_request(  # type: ignore[override]
        self, request: socket.socket, client_address: Any
    ) -> None:
        key = self._peer_keys.of(request)
        refusal = None
        with self._active_lock:
            if self._active >= self.limits.max_connections:
                refusal = BUSY
            elif key is not None and self._per_job.get(key, 0) >= (
                self.limits.max_connections_per_job
            ):
                refusal = JOB_BUSY
            else:
                self._active += 1
                self._per_job[key] = self._per_job.get(key, 0) + 1
        if refusal is not None:
            # A fresh connection's send buffer is empty: this never blocks the acceptor.
            with contextlib.suppress(OSError):
                request.send(refusal, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
            self.shutdown_request(request)
            return
        thread = threading.Thread(
            target=self._serve_one, args=(request, client_address, key), daemon=True
        )
        try:
            thread.start()
        except RuntimeError:  # no thread to be had: refuse like a full server
            self._release(key)
            self.shutdown_request(request)

    def _serve_one(self, request: socket.socket, client_address: Any, key: str | None) -> None:
        try:
            ExchangeHandler(request, client_address, self, peer_key=key)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            self._release(key)

    def _release(self, key: str | None) -> None:
        with self._active_lock:
            self._active -= 1
            left = self._per_job.get(key, 1) - 1
            if left:
                self._per_job[key] = left
            else:
                self._per_job.pop(key, None)

    def server_close(self) -> None:
        super().server_close()
        try:
            if self._ino is not None and os.stat(self.socket_path).st_ino == self._ino:
                os.unlink(self.socket_path)
        except OSError:
            pass
