"""The credential proxy: puts a job's secrets into its requests on the host side.

docs/design.md, "Credential proxy", is the design; in short: each connection on the
proxy socket is attested before a byte is read (the token service's peer attestation;
in spire mode by the JWT-SVID in its first request head, proxy_attest.py), then it is
a CONNECT (HTTPS_PROXY clients, through the in-container relay), a TLS ClientHello
straight away (SNI names the host), or `GET /ca.pem`. Requests to a host
that some secret's rule names are intercepted: TLS is terminated with a leaf of this
host's CA, the request head's placeholders are replaced, bodies and the response are
spliced through untouched, one request per connection. Everything else is tunnelled
untouched. Every upstream connection passes the jobs' egress rule (egress.py).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import select
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Callable

from .attest_peer import AttestationError
from .audit import AuditLog
from .egress import Egress, EgressRefused, check_hostname
from .github_scope import ScopeRefused
from .identity import JobIdentity
from .job_budget import BudgetUnreadable
from .peer_key import PeerKeys
from .placeholder import find
from .policy import Policy, SecretUnavailable
from .proxy_ca import HostCA
from .proxy_config import ProxySettings
from .proxy_meter import MeterError, clamp, is_metered, read_body, relay_response
from .server import bind_in_place
from .usage import UsageBook

MAX_HEAD = 65536
CHUNK = 65536
SPLICE_BUFFER = 1 << 20
# Headers that belong to one hop: never passed on (the proxy ones would tell upstream
# about us; Connection is set to close: one request per intercepted connection).
HOP_HEADERS = {"connection", "keep-alive", "proxy-connection", "proxy-authorization", "te"}
CA_PATH = "/ca.pem"
# Only credential headers get a value put in: a header a server might echo back (into
# a body, a page, a log the job can read) would hand the job its secret.
INJECT_HEADERS = {"authorization", "x-api-key"}


class Refused(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code


REASONS = {400: "Bad Request", 403: "Forbidden", 408: "Request Timeout", 411: "Length Required",
           413: "Content Too Large", 502: "Bad Gateway", 503: "Service Unavailable"}  # fmt: skip


def refusal_bytes(status: int, code: str, message: str) -> bytes:
    # The Messages API's error shape, so model clients show the message as it is.
    record = {"type": "error", "error": {"type": code, "message": message}, "code": code}
    body = json.dumps(record | {"by": "flashpods-proxy"}).encode() + b"\n"
    head = (
        f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"X-Flashpods-Proxy: {code}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def read_head(sock: socket.socket, leftover: bytes, deadline: float) -> tuple[bytes, bytes]:
    """(the request head up to and without its blank line, the bytes after it)."""
    data = leftover
    while b"\r\n\r\n" not in data:
        if len(data) > MAX_HEAD:
            raise Refused(400, "head_too_large", f"the request head exceeds {MAX_HEAD} bytes")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Refused(408, "too_slow", "the request head did not arrive in time")
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(CHUNK)
        except (TimeoutError, ssl.SSLWantReadError):
            raise Refused(408, "too_slow", "the request head did not arrive in time") from None
        if not chunk:
            raise ConnectionResetError("the client closed before a request")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    if len(head) > MAX_HEAD:
        raise Refused(400, "head_too_large", f"the request head exceeds {MAX_HEAD} bytes")
    return head, rest


def parse_head(head: bytes) -> tuple[list[str], list[tuple[str, str]]]:
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        raise Refused(400, "bad_request", "the request head is not text") from None
    line, *rest = text.split("\r\n")
    parts = line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise Refused(400, "bad_request", "the request line must be 'METHOD TARGET HTTP/1.1'")
    headers = []
    for raw in rest:
        if any(c in raw for c in "\n\r\0"):
            # A bare LF ends a line for some servers: it would smuggle a header past us.
            raise Refused(400, "bad_request", "a request header holds a bare LF, CR or NUL")
        name, sep, value = raw.partition(":")
        if not sep or not name or name != name.strip() or any(c in name for c in " \t"):
            raise Refused(400, "bad_request", "a request header line is malformed")
        headers.append((name, value.strip()))
    return parts, headers


def host_of(authority: str) -> tuple[str, int | None]:
    """('host', port or None) of 'host', 'host:port', '[v6]:port'."""
    if authority.startswith("["):
        host, _, rest = authority[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif authority.count(":") == 1:
        host, _, port = authority.partition(":")
    else:
        host, port = authority, ""
    if port and not port.isdigit():
        raise Refused(400, "bad_request", f"bad port in {authority[:80]!r}")
    try:
        return check_hostname(host), int(port) if port else None
    except EgressRefused as exc:
        raise Refused(400, "bad_request", str(exc)) from None


def _encode_head(request_line: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [request_line] + [f"{n}: {v}" for n, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def splice(client: socket.socket, upstream: socket.socket, idle_s: float) -> None:
    """Copy bytes both ways until upstream closes (or nothing moves for idle_s).

    One thread: an SSL socket must not be read and written from two threads at once."""
    for s in (client, upstream):
        s.settimeout(idle_s)
    readers: list[socket.socket] = [client, upstream]
    buf = bytearray(SPLICE_BUFFER)
    view = memoryview(buf)
    while readers:
        ready: list[socket.socket] = [
            s for s in readers if isinstance(s, ssl.SSLSocket) and s.pending()
        ]
        if not ready:
            ready = select.select(readers, [], [], idle_s)[0]
            if not ready:
                return
        for s in ready:
            other = upstream if s is client else client
            # Readable is not a whole record: a TLS 1.3 session ticket alone wakes select
            # too, and a blocking read would then wait for data that comes only after the
            # other side's upload (a git push hung here). Read without blocking.
            s.settimeout(0)
            try:
                n = s.recv_into(view[:CHUNK])
                # A TLS socket hands out one record (16 KiB) per read: take every record
                # that has already arrived too (decrypted, or waiting in the socket), so
                # one write carries many and the loop turns once per burst, not per record.
                while n and n < len(buf) and isinstance(s, ssl.SSLSocket):
                    if not s.pending() and not select.select([s], [], [], 0)[0]:
                        break
                    try:
                        got = s.recv_into(view[n:], min(CHUNK, len(buf) - n))
                    except ssl.SSLWantReadError:
                        break  # part of a record only: keep the n bytes read so far
                    if not got:
                        break  # the end: seen again (and handled) at the next turn
                    n += got
            except ssl.SSLWantReadError:
                continue
            except (OSError, ssl.SSLError):
                return
            finally:
                s.settimeout(idle_s)
            data = view[:n]
            if not n:
                if s is upstream:
                    return
                readers.remove(s)  # the client sent all; keep answering it
                with contextlib.suppress(OSError):
                    if not isinstance(upstream, ssl.SSLSocket):
                        upstream.shutdown(socket.SHUT_WR)
                continue
            try:
                other.sendall(data)
            except OSError:
                return


class CredentialProxy:
    """What one connection may do: attest, policy, egress, CA; no socket server here."""

    def __init__(
        self,
        settings: ProxySettings,
        policy: Policy,
        attest: Callable[[socket.socket], JobIdentity | None],
        egress: Egress,
        ca: HostCA,
        audit: AuditLog | None = None,
        usage: UsageBook | None = None,
        attest_head: Callable[[list[tuple[str, str]], str | None], JobIdentity] | None = None,
    ):
        # attest: the job behind the connection, or None when it is known only from the
        # first request head (spire mode: attest_head reads the JWT-SVID there, and gets
        # the connection's peer key to check the SVID is presented from its own job).
        self.attest_head = attest_head
        self.usage = usage
        self.settings = settings
        self.policy = policy
        self.attest = attest
        self.egress = egress
        self.ca = ca
        self._rules = {name: set(hosts) for name, hosts in settings.rules.items()}
        self._ruled_hosts = set().union(*self._rules.values()) if self._rules else set()
        self._upstream_ctx = ssl.create_default_context(cafile=settings.upstream_ca_file)
        self._upstream_ctx.set_alpn_protocols(["http/1.1"])
        # The last TLS session per upstream (host, port): the next connection resumes it
        # (no certificate chain to send and verify again). Shared by all jobs, like the
        # proxy's source address: it tells the upstream nothing more about a job.
        self._upstream_sessions: dict[tuple[str, int], ssl.SSLSession] = {}
        self._sni_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._sni_ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        self._sni_ctx.set_alpn_protocols(["http/1.1"])
        self._sni_ctx.sni_callback = self._on_sni
        # One line per request; a request that injected a secret is always written, the
        # rest (tunnels, refusals, failures) count against the caller's window as failed
        # exchanges do in the token service, so a job cannot flood the log.
        self._audit = audit or AuditLog(None)
        self._caller = threading.local()  # who the serving thread's lines are charged to

    # -- one connection ---------------------------------------------------------------

    def serve(self, conn: socket.socket, peer: str | None = None) -> None:
        record: dict = {"outcome": "refused"}
        self._caller.peer = peer
        self._caller.spiffe_id = None
        deadline = time.monotonic() + 2 * self.settings.read_timeout_s
        client: socket.socket = conn
        try:
            ident: JobIdentity | None = None
            refusal: Refused | None = None
            try:
                ident = self.attest(conn)
                if ident is not None:
                    self._attested(ident, record)
            except AttestationError as exc:
                record["check"] = exc.check
                refusal = Refused(403, "unauthenticated", f"not a running job: {exc}")
            conn.settimeout(self.settings.read_timeout_s)
            first = conn.recv(1, socket.MSG_PEEK)
            if not first:
                return
            if first == b"\x16":
                client, host = self._accept_tls(conn)
                record |= {"host": host, "port": 443, "shape": "tls"}
                if refusal is not None:
                    raise refusal
                self._intercept(ident, client, host, 443, b"", deadline, record)
                return
            head, rest = read_head(conn, b"", deadline)
            (method, target, _), connect_headers = parse_head(head)
            if method == "GET" and target == CA_PATH:
                # The certificate is public: served also to callers that are no job.
                body = self.ca.cert_pem
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/x-pem-file\r\n"
                    + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                    + body
                )
                record = {}
                return
            if refusal is not None:
                raise refusal
            if ident is None:
                ident = self._attest_head(connect_headers, record)
            if method != "CONNECT":
                raise Refused(
                    400,
                    "not_connect",
                    "send CONNECT host:port (HTTPS_PROXY) or TLS straight away; "
                    "plain-HTTP proxying is not offered",
                )
            host, port = host_of(target)
            record |= {"host": host, "port": port, "shape": "connect"}
            if port is None:
                raise Refused(400, "bad_request", "CONNECT needs host:port")
            if host in self._ruled_hosts:
                # Check before the client is told the tunnel is up.
                self._resolve(host, port)
                conn.sendall(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                client = self.ca.server_context(host).wrap_socket(conn, server_side=True)
                self._intercept(ident, client, host, port, rest, deadline, record)
                return
            upstream = self._connect(host, port)
            try:
                conn.sendall(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                if rest:
                    upstream.sendall(rest)
                record["outcome"] = "tunnelled"
                self._log_record(record)
                record = {}
                splice(conn, upstream, self.settings.idle_timeout_s)
            finally:
                upstream.close()
        except Refused as exc:
            record |= {"outcome": "refused", "code": exc.code, "error": str(exc)}
            with contextlib.suppress(OSError, ssl.SSLError):
                client.settimeout(self.settings.read_timeout_s)
                client.sendall(refusal_bytes(exc.status, exc.code, str(exc)))
        except (OSError, ssl.SSLError, ValueError) as exc:
            record |= {"outcome": "failed", "error": f"{type(exc).__name__}: {exc}"[:300]}
        finally:
            if record:
                self._log_record(record)
            with contextlib.suppress(OSError):
                client.close()

    def _attested(self, ident: JobIdentity, record: dict) -> JobIdentity:
        record |= {"job": ident.job_id, "role": ident.role}
        self._caller.spiffe_id = ident.spiffe_id
        return ident

    def _attest_head(self, headers: list[tuple[str, str]], record: dict) -> JobIdentity:
        if self.attest_head is None:
            raise Refused(403, "unauthenticated", "not a running job: no attestation")
        try:
            peer = getattr(self._caller, "peer", None)
            return self._attested(self.attest_head(headers, peer), record)
        except AttestationError as exc:
            record["check"] = exc.check
            raise Refused(403, "unauthenticated", f"not a running job: {exc}") from None

    def _accept_tls(self, conn: socket.socket) -> tuple[ssl.SSLSocket, str]:
        holder: dict[str, str] = {}
        self._pending_sni.name = holder
        try:
            tls = self._sni_ctx.wrap_socket(conn, server_side=True)
        finally:
            self._pending_sni.name = None
        return tls, holder["host"]

    _pending_sni = threading.local()

    def _on_sni(
        self, sslobj: ssl.SSLObject, server_name: str | None, ctx: ssl.SSLContext
    ) -> int | None:
        holder = getattr(self._pending_sni, "name", None)
        try:
            host = check_hostname(server_name or "")
        except EgressRefused:
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        if holder is not None:
            holder["host"] = host
        sslobj.context = self.ca.server_context(host)
        return None

    def _resolve(self, host: str, port: int) -> None:
        try:
            self.egress.resolve(host, port)
        except EgressRefused as exc:
            raise Refused(403, "egress_refused", str(exc)) from None

    def _connect(self, host: str, port: int) -> socket.socket:
        try:
            return self.egress.connect(host, port)
        except EgressRefused as exc:
            raise Refused(403, "egress_refused", str(exc)) from None
        except OSError as exc:
            raise Refused(502, "upstream_unreachable", str(exc)) from None

    # -- one intercepted request ------------------------------------------------------

    def _intercept(
        self,
        ident: JobIdentity | None,
        client: socket.socket,
        host: str,
        port: int,
        leftover: bytes,
        deadline: float,
        record: dict,
    ) -> None:
        head, rest = read_head(client, leftover, deadline)
        (method, target, version), headers = parse_head(head)
        record["method"] = method
        if ident is None:  # spire mode, TLS straight away: the SVID is in this head
            ident = self._attest_head(headers, record)
        injected: list[str] = []
        out: list[tuple[str, str]] = []
        seen_host = False
        for name, value in headers:
            lname = name.lower()
            if lname in HOP_HEADERS:
                continue
            if lname == "host":
                seen_host = True
                named, _ = host_of(value)
                if named != host:
                    raise Refused(
                        400,
                        "host_mismatch",
                        f"Host: {value[:80]} is not {host}, the host this connection is for",
                    )
            if lname in INJECT_HEADERS:
                value = self._rewrite(ident, host, value, injected)
            if lname == "authorization" and value[:6].lower() == "basic ":
                value = "Basic " + self._rewrite_basic(ident, host, value[6:].strip(), injected)
            out.append((name, value))
        if not seen_host:
            out.insert(0, ("Host", host if port == 443 else f"{host}:{port}"))
        record["injected"] = sorted(set(injected))
        request_line = f"{method} {target} {version}"
        scope = self.settings.github_scope
        if scope is not None and host in self._rules.get(scope.secret, ()):
            try:  # github_scope.py: reads pass, pushes only to the job's branches
                rest = scope.admit(
                    ident.job_id, client, method, target, out, rest, self.settings.read_timeout_s
                )
            except ScopeRefused as exc:
                if exc.answer is None:
                    raise Refused(exc.status, exc.code, str(exc)) from None
                record |= {"outcome": "refused", "code": exc.code, "error": str(exc)}
                client.sendall(exc.answer)  # a receive-pack report that git prints
                return
        if (
            self.usage is not None
            and host in self._rules.get(self.settings.model_secret, ())
            and is_metered(method, target)
        ):
            self._forward_metered(ident, client, host, port, request_line, out, rest, record)
            return
        out.append(("Connection", "close"))
        upstream = self._open_upstream(host, port)
        try:
            upstream.sendall(_encode_head(request_line, out) + rest)
            record["outcome"] = "forwarded"
            self._log_record(dict(record))
            record.clear()
            splice(client, upstream, self.settings.idle_timeout_s)
        finally:
            self._close_upstream(upstream, host, port)

    def _forward_metered(
        self,
        ident: JobIdentity,
        client: socket.socket,
        host: str,
        port: int,
        request_line: str,
        headers: list[tuple[str, str]],
        rest: bytes,
        record: dict,
    ) -> None:
        """A Messages API call: max_tokens clamped to the budget, usage read from the answer."""
        assert self.usage is not None
        try:
            body = read_body(client, rest, headers, self.settings.read_timeout_s * 6)
            _, asked = clamp(body, None)
        except MeterError as exc:
            raise Refused(exc.status, exc.code, str(exc)) from None
        try:
            reserved = self.usage.reserve(ident.job_id, asked)
        except BudgetUnreadable as exc:  # never the host default instead: it may be higher
            raise Refused(503, "budget_unreadable", f"the job's budget file: {exc}") from None
        if reserved == 0:
            raise Refused(
                403,
                "budget_exhausted",
                # Both words in the message itself: clients such as Claude Code print
                # only the message, and the agent's summary looks for them there.
                f"budget_exhausted (flashpods-proxy): job {ident.job_id} has used its model "
                f"token budget ({self.usage.budget_of(ident.job_id)} tokens)",
            )
        settled = False
        try:
            body, _ = clamp(body, reserved)
            if reserved is not None and asked != reserved:
                record["max_tokens"] = {"asked": asked, "sent": reserved}
            # The usage is read from the answer: ask for it unencoded.
            dropped = ("content-length", "accept-encoding", "transfer-encoding")
            headers = [(n, v) for n, v in headers if n.lower() not in dropped] + [
                ("Content-Length", str(len(body))),
                ("Accept-Encoding", "identity"),
                ("Connection", "close"),
            ]
            upstream = self._open_upstream(host, port)
            try:
                upstream.sendall(_encode_head(request_line, headers) + body)
                idle = self.settings.idle_timeout_s
                head, after = read_head(upstream, b"", time.monotonic() + idle)
                seen = relay_response(upstream, client, head, after, idle)
            finally:
                self._close_upstream(upstream, host, port)
            self.usage.settle(ident.job_id, reserved, seen)
            settled = True
            self._log_record(record | {"outcome": "forwarded", "usage": seen})
            record.clear()
        finally:
            if not settled:
                self.usage.release(ident.job_id, reserved)

    def _open_upstream(self, host: str, port: int) -> ssl.SSLSocket:
        raw = self._connect(host, port)
        session = self._upstream_sessions.get((host, port))
        try:
            return self._upstream_ctx.wrap_socket(raw, server_hostname=host, session=session)
        except (ssl.SSLError, OSError) as exc:
            raw.close()
            raise Refused(502, "upstream_tls", f"TLS to {host}:{port} failed: {exc}") from None

    def _close_upstream(self, upstream: ssl.SSLSocket, host: str, port: int) -> None:
        # A TLS 1.3 ticket arrives after the handshake: the session is worth keeping now.
        with contextlib.suppress(OSError, ValueError):
            session = upstream.session
            if session is not None and session.has_ticket:
                if len(self._upstream_sessions) > 1024:
                    self._upstream_sessions.clear()  # bound memory against many hosts
                self._upstream_sessions[(host, port)] = session
        upstream.close()

    def _rewrite(self, ident: JobIdentity, host: str, value: str, injected: list[str]) -> str:
        for found in find(value):
            if host not in self._rules.get(found.name, ()):
                continue  # not this secret's host: the placeholder passes unchanged
            if found.job_id != ident.job_id:
                raise Refused(
                    403,
                    "foreign_placeholder",
                    f"this request carries the {found.name} placeholder of another job",
                )
            if found.name not in self.policy.allowed(ident.role):
                raise Refused(403, "not_granted", f"role {ident.role} may not use {found.name}")
            try:
                secret = self.policy.read(found.name)
            except SecretUnavailable as exc:
                raise Refused(503, "secret_unavailable", str(exc)) from None
            value = value.replace(found.text, secret)
            injected.append(found.name)
        return value

    def _rewrite_basic(self, ident: JobIdentity, host: str, b64: str, injected: list[str]) -> str:
        try:
            decoded = base64.b64decode(b64, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return b64  # not ours to judge: passed on as sent
        before = len(injected)
        rewritten = self._rewrite(ident, host, decoded, injected)
        if len(injected) == before:
            return b64
        return base64.b64encode(rewritten.encode("utf-8")).decode("ascii")

    def _log_record(self, record: dict) -> None:
        self._audit.record_entry(
            record,
            always=bool(record.get("injected")),
            spiffe_id=getattr(self._caller, "spiffe_id", None),
            job=record.get("job"),
            peer=getattr(self._caller, "peer", None),
        )


class ProxyServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """One daemon thread per connection, up to max_connections at once."""

    daemon_threads = True
    allow_reuse_address = False
    request_queue_size = 128

    def __init__(self, proxy: CredentialProxy, group: str | None):
        self.proxy = proxy
        self._group = group
        self._ino: int | None = None
        self._active = 0
        self._per_job: dict[str | None, int] = {}
        self._peer_keys = PeerKeys()
        self._lock = threading.Lock()
        self._keys: dict[int, str | None] = {}
        super().__init__(proxy.settings.socket, socketserver.BaseRequestHandler)

    def server_bind(self) -> None:
        self._ino = bind_in_place(
            self.socket, self.proxy.settings.socket, self._group, self.request_queue_size
        )
        self.server_address = self.proxy.settings.socket

    def server_activate(self) -> None:
        pass  # server_bind listens before it renames the socket into place

    def process_request(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        # Admission from kernel facts in the accepting thread, as in the token service:
        # the caller's job is its top PID namespace below ours (peer_key.py).
        key = self._peer_keys.of(request)
        limits = self.proxy.settings
        with self._lock:
            if self._active >= limits.max_connections:
                refusal = "the credential proxy is busy; retry shortly"
            elif key is not None and self._per_job.get(key, 0) >= limits.max_connections_per_job:
                refusal = f"this job has {limits.max_connections_per_job} proxy connections open"
            else:
                refusal = None
                self._active += 1
                self._per_job[key] = self._per_job.get(key, 0) + 1
                self._keys[id(request)] = key
        if refusal is not None:
            with contextlib.suppress(OSError):
                request.send(
                    refusal_bytes(503, "busy", refusal), socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL
                )
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except RuntimeError:  # no thread to be had: refuse like a full server
            self._release(request)
            self.shutdown_request(request)

    def _release(self, request: socket.socket) -> None:
        with self._lock:
            key = self._keys.pop(id(request), None)
            self._active -= 1
            left = self._per_job.get(key, 1) - 1
            if left:
                self._per_job[key] = left
            else:
                self._per_job.pop(key, None)

    def process_request_thread(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        try:
            with self._lock:
                peer = self._keys.get(id(request))
            self.proxy.serve(request, peer)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self._release(request)
            with contextlib.suppress(OSError):
                request.close()

    def server_close(self) -> None:
        super().server_close()
        # Remove our socket, never a successor's (same rule as the token service).
        with contextlib.suppress(OSError):
            path = self.proxy.settings.socket
            if self._ino is not None and os.stat(path).st_ino == self._ino:
                os.unlink(path)
