"""Optional GitHub scoping in the credential proxy (token config `proxy.github_scope`).

A host setting that narrows what a job may do through the proxy with the GitHub secret,
whatever the token itself could do: reads pass (GET/HEAD/OPTIONS, git fetches, GraphQL
queries); a git push (`POST .../git-receive-pack`) passes only if every ref it changes
is a branch matching `push_branches` (`{job_id}` is the caller's attested job); deletes
and tags are refused; other writes (REST non-GET, GraphQL mutations, anything else that
is not a read) only with `api_write`. docs/token.md says what this can and cannot
enforce.

The push check reads the pkt-line command list at the start of the request body
(before the PACK data) from a bounded copy, forwards the bytes unchanged, and refuses
the whole push if one ref is outside; the refusal is a receive-pack report, so git
prints it per ref (`! [remote rejected] main -> main (...)`).
"""

from __future__ import annotations

import fnmatch
import json
import re
import socket
import time
import urllib.parse
from dataclasses import dataclass, field

from .http_chunks import ChunkDecoder

READ_METHODS = {"GET", "HEAD", "OPTIONS"}
MAX_COMMANDS_BYTES = 1 << 20  # the command list of a push (refs and capabilities)
MAX_GRAPHQL_BODY = 1 << 20
MAX_DRAIN = 64 << 20  # what a refused push's pack may still send before we answer
PKT_MAX = 65520
ZERO_OIDS = {"0" * 40, "0" * 64}
OID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
PATTERN_CHARS = re.compile(r"[A-Za-z0-9._/*{}-]+")
# What check-ref-format refuses, refused here too (fail closed before git would).
BAD_REF = re.compile(r"\.\.|//|/\.|@\{|[\x00-\x20\x7f~^:?*\[\\]|\.lock(/|$)|^\.|/$|\.$")
# Headers that make a server treat a POST as another method.
OVERRIDE_HEADERS = {"x-http-method-override", "x-http-method", "x-method-override"}
DEFAULT_PUSH = ["flashpods/{job_id}/*"]
# What passes as a read though it is a POST: exact shapes only (no percent-encoding,
# no dot segments), so no other endpoint can pose as one. Anything else is a write.
FETCH_PATH = re.compile(r"/(?!\.\.?/)[A-Za-z0-9_.-]+/(?!\.\.?/)[A-Za-z0-9_.-]+/git-upload-pack")
GRAPHQL_PATHS = {"/graphql", "/api/graphql"}  # github.com's API host; GitHub Enterprise


class ScopeError(Exception):
    """A bad `github_scope` block."""


class ScopeRefused(Exception):
    """(status, code, message); `answer` is a whole HTTP response to send instead of
    the proxy's JSON refusal (a receive-pack report git prints)."""

    def __init__(self, status: int, code: str, message: str, answer: bytes | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.answer = answer


@dataclass(frozen=True)
class GithubScope:
    secret: str = "GITHUB_TOKEN"
    push_branches: list[str] = field(default_factory=lambda: list(DEFAULT_PUSH))
    api_write: bool = False

    # -- the policy -------------------------------------------------------------------

    def branch_allowed(self, job_id: str, ref: str) -> bool:
        if not ref.startswith("refs/heads/") or BAD_REF.search(ref):
            return False
        branch = ref[len("refs/heads/") :]
        return any(
            fnmatch.fnmatchcase(branch, p.replace("{job_id}", job_id)) for p in self.push_branches
        )

    def admit(
        self,
        job_id: str,
        client: socket.socket,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        rest: bytes,
        wait_s: float,
    ) -> bytes:
        """The body bytes already read (to forward first), or ScopeRefused."""
        names = {n.lower() for n, _ in headers}
        raw_path = target.split("?", 1)[0]
        path = urllib.parse.unquote(raw_path).lower()
        if "git-receive-pack" in path:
            return self._admit_push(job_id, client, method, headers, rest, wait_s)
        if method in READ_METHODS and not names & OVERRIDE_HEADERS:
            return rest
        if method == "POST" and FETCH_PATH.fullmatch(raw_path) and not names & OVERRIDE_HEADERS:
            return rest  # a fetch: a read
        if self.api_write:
            return rest
        if method == "POST" and raw_path in GRAPHQL_PATHS:
            body = read_whole(client, rest, headers, MAX_GRAPHQL_BODY, wait_s, "a GraphQL body")
            kind = graphql_operation_kinds(body)
            if kind <= {"query"} and not names & OVERRIDE_HEADERS:
                return body
            raise ScopeRefused(
                403,
                "scope_refused",
                "GraphQL mutations are refused for this job (github_scope.api_write is "
                "false); queries are allowed",
            )
        raise ScopeRefused(
            403,
            "scope_refused",
            f"{method} {target[:120]} is a write, refused for this job (github_scope."
            "api_write is false): jobs may read, and push to branches "
            + ", ".join(p.replace("{job_id}", job_id) for p in self.push_branches),
        )

    def _admit_push(
        self,
        job_id: str,
        client: socket.socket,
        method: str,
        headers: list[tuple[str, str]],
        rest: bytes,
        wait_s: float,
    ) -> bytes:
        if method != "POST":
            raise ScopeRefused(400, "scope_refused", "git-receive-pack takes POST only")
        framing = body_framing(headers)
        reader = BodyPrefix(client, rest, framing, time.monotonic() + wait_s)
        commands, caps = read_commands(reader)
        outside = [ref for _, new, ref in commands if not self._command_allowed(job_id, new, ref)]
        if not outside:
            return bytes(reader.raw)
        allowed = ", ".join(
            "refs/heads/" + p.replace("{job_id}", job_id) for p in self.push_branches
        )
        reason = (
            f"flashpods: push refused: {', '.join(outside[:5])} outside this job's push "
            f"scope (only {allowed}; no deletes, no tags); the whole push was refused"
        )
        reader.drain(MAX_DRAIN)
        answer = push_refusal(commands, caps, outside, reason)
        raise ScopeRefused(403, "scope_refused", reason, answer)

    def _command_allowed(self, job_id: str, new: str, ref: str) -> bool:
        return new not in ZERO_OIDS and self.branch_allowed(job_id, ref)


def parse_scope(data: object, rules: dict[str, list[str]]) -> GithubScope | None:
    if data is None:
        return None
    if not isinstance(data, dict):
        raise ScopeError("token config proxy.github_scope must be an object")
    unknown = sorted(set(data) - {"secret", "push_branches", "api_write"})
    if unknown:
        raise ScopeError(
            f"token config proxy.github_scope: unknown key {unknown[0]!r}; allowed keys are "
            "api_write, push_branches, secret"
        )
    secret = data.get("secret", "GITHUB_TOKEN")
    if secret not in rules:
        raise ScopeError(
            f"token config proxy.github_scope.secret {secret!r} has no host rule in proxy.rules"
        )
    pushes = data.get("push_branches", DEFAULT_PUSH)
    if not isinstance(pushes, list) or not all(isinstance(p, str) for p in pushes):
        raise ScopeError("token config proxy.github_scope.push_branches must list branch patterns")
    for p in pushes:
        if (
            not PATTERN_CHARS.fullmatch(p)
            or p.startswith("refs/")
            or "{" in p.replace("{job_id}", "")
            or "}" in p.replace("{job_id}", "")
        ):
            raise ScopeError(
                f"token config proxy.github_scope.push_branches: {p!r} is not a branch pattern "
                "(a name under refs/heads/ of letters, digits, ._-/, '*' and {job_id}, "
                "e.g. flashpods/{job_id}/*)"
            )
    api_write = data.get("api_write", False)
    if not isinstance(api_write, bool):
        raise ScopeError("token config proxy.github_scope.api_write must be true or false")
    return GithubScope(str(secret), list(pushes), api_write)


# -- request bodies -------------------------------------------------------------------


def body_framing(headers: list[tuple[str, str]]) -> int | None:
    """The Content-Length, or None for chunked; anything ambiguous is refused."""
    lengths = [v for n, v in headers if n.lower() == "content-length"]
    codings = [v.strip().lower() for n, v in headers if n.lower() == "transfer-encoding"]
    encoded = [v.strip().lower() for n, v in headers if n.lower() == "content-encoding"]
    if any(e not in ("", "identity") for e in encoded):
        raise ScopeRefused(
            400, "scope_unreadable", "send this body without Content-Encoding (it is checked)"
        )
    if codings and lengths:
        raise ScopeRefused(400, "bad_request", "a body with both Content-Length and chunked")
    if codings:
        if codings != ["chunked"]:
            raise ScopeRefused(400, "bad_request", "Transfer-Encoding must be chunked alone")
        return None
    if len(lengths) != 1 or not lengths[0].strip().isdigit():
        raise ScopeRefused(411, "length_required", "send one Content-Length (or chunked)")
    return int(lengths[0])


class BodyPrefix:
    """Reads the start of a request body from the job: `raw` keeps the bytes as sent
    (forwarded unchanged), `take(n)` hands out the decoded ones."""

    def __init__(self, sock: socket.socket, have: bytes, length: int | None, deadline: float):
        self.sock = sock
        self.raw = bytearray(have)
        self.length = length
        self.deadline = deadline
        self._decoder = ChunkDecoder() if length is None else None
        self._decoded = bytearray()
        self._fed = 0
        self._seen = 0  # body bytes seen (Content-Length framing)
        self._ended = False
        self._feed()

    def _feed(self) -> None:
        new = bytes(self.raw[self._fed :])
        self._fed = len(self.raw)
        if self._decoder is not None:
            try:
                self._decoded += self._decoder.feed(new)
            except ValueError:
                raise ScopeRefused(400, "bad_request", "the chunked body is malformed") from None
            self._ended = self._decoder.done
        else:
            assert self.length is not None
            keep = max(0, self.length - self._seen)
            self._decoded += new[:keep]
            self._seen += len(new)
            self._ended = self._seen >= self.length

    def _recv(self, cap: int) -> None:
        if len(self.raw) > cap:
            raise ScopeRefused(
                413, "scope_unreadable", f"the push's command list exceeds {cap} bytes"
            )
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise ScopeRefused(408, "too_slow", "the push's command list did not arrive in time")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            raise ScopeRefused(
                408, "too_slow", "the push's command list did not arrive in time"
            ) from None
        if not chunk:
            raise ConnectionResetError("the client closed inside its push")
        self.raw += chunk
        self._feed()

    def take(self, n: int) -> bytes | None:
        """The next n decoded bytes, or None where the body ends first."""
        while len(self._decoded) < n:
            if self._ended:
                return None
            self._recv(MAX_COMMANDS_BYTES)
        out = bytes(self._decoded[:n])
        del self._decoded[:n]
        return out

    def drain(self, cap: int) -> None:
        """Read (and drop) what the job still sends of this body, so it reads our answer
        instead of failing on a closed socket; bounded by cap and the deadline."""
        total = len(self.raw)
        self._decoded.clear()
        while not self._ended and total < cap and time.monotonic() < self.deadline:
            try:
                self.sock.settimeout(max(0.01, self.deadline - time.monotonic()))
                chunk = self.sock.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            total += len(chunk)
            self.raw = bytearray(chunk)
            self._fed = 0
            self._feed()
            self._decoded.clear()


def read_whole(
    sock: socket.socket,
    have: bytes,
    headers: list[tuple[str, str]],
    cap: int,
    wait_s: float,
    what: str,
) -> bytes:
    length = body_framing(headers)
    if length is None:
        raise ScopeRefused(411, "length_required", f"send {what} with Content-Length")
    if length > cap:
        raise ScopeRefused(413, "scope_unreadable", f"{what} over {cap} bytes is not checked")
    reader = BodyPrefix(sock, have, length, time.monotonic() + wait_s)
    if reader.take(length) is None:  # pragma: no cover - take waits for length bytes
        raise ScopeRefused(400, "bad_request", f"{what} ended early")
    return bytes(reader.raw[:length])


# -- git's pkt-lines ------------------------------------------------------------------


def read_commands(reader: BodyPrefix) -> tuple[list[tuple[str, str, str]], set[str]]:
    """[(old, new, ref)] and the capabilities of a receive-pack request's command list.

    Shallow lines may come first; the list ends at a flush-pkt. A body that is only a
    flush (git's probe before a large chunked push) has no commands."""
    commands: list[tuple[str, str, str]] = []
    caps: set[str] = set()
    read = 0
    while True:
        size_hex = reader.take(4)
        if size_hex is None:
            if not commands and read == 0:
                return [], caps  # an empty body
            raise ScopeRefused(400, "bad_request", "the push's command list ended early")
        try:
            size = int(size_hex.decode("ascii"), 16)
        except (UnicodeDecodeError, ValueError):
            raise ScopeRefused(
                400, "bad_request", "the push is not a git pkt-line stream (bad length)"
            ) from None
        if size == 0:
            return commands, caps
        if size < 4 or size > PKT_MAX:
            raise ScopeRefused(400, "bad_request", f"the push has a pkt-line of length {size}")
        read += size
        if read > MAX_COMMANDS_BYTES:
            raise ScopeRefused(
                413, "scope_unreadable", f"the push's command list exceeds {MAX_COMMANDS_BYTES}"
            )
        payload = reader.take(size - 4)
        if payload is None:
            raise ScopeRefused(400, "bad_request", "the push's command list ended early")
        line, _, cap_text = payload.rstrip(b"\n").partition(b"\0")
        if not commands and cap_text:
            caps = set(cap_text.decode("ascii", "replace").split())
        text = line.decode("utf-8", "replace")
        if text.startswith("shallow ") and not commands:
            continue
        if text.startswith("push-cert"):
            raise ScopeRefused(
                403, "scope_refused", "signed pushes (push-cert) are not supported by the scope"
            )
        parts = text.split(" ")
        if len(parts) != 3 or not OID.fullmatch(parts[0]) or not OID.fullmatch(parts[1]):
            raise ScopeRefused(
                400, "bad_request", "the push's command list holds a line that is not a command"
            )
        commands.append((parts[0], parts[1], parts[2]))


def pkt(data: bytes) -> bytes:
    return b"%04x" % (len(data) + 4) + data


def push_refusal(
    commands: list[tuple[str, str, str]],
    caps: set[str],
    outside: list[str],
    reason: str,
) -> bytes:
    """A whole HTTP response: a receive-pack report refusing every ref (git prints one
    `! [remote rejected]` line each), with the reason on the side band when asked for."""
    if not caps & {"report-status", "report-status-v2"}:
        body = (reason + "\n").encode()
        head = (
            "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {len(body)}\r\nX-Flashpods-Proxy: scope_refused\r\n"
            "Connection: close\r\n\r\n"
        )
        return head.encode() + body
    report = pkt(b"unpack ok\n")
    for _, _, ref in commands:
        why = "outside the push scope" if ref in outside else "another ref is outside the scope"
        report += pkt(f"ng {ref} flashpods: {why}\n".encode("utf-8", "replace"))
    report += b"0000"
    if caps & {"side-band-64k", "side-band"}:
        step = 65515 if "side-band-64k" in caps else 995
        message = f"{reason}\n".encode("utf-8", "replace")
        body = pkt(b"\x02" + message[:step])
        for i in range(0, len(report), step):
            body += pkt(b"\x01" + report[i : i + step])
        body += b"0000"
    else:
        body = report
    head = (
        "HTTP/1.1 200 OK\r\nContent-Type: application/x-git-receive-pack-result\r\n"
        f"Content-Length: {len(body)}\r\nX-Flashpods-Proxy: scope_refused\r\n"
        "Cache-Control: no-cache\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


# -- GraphQL --------------------------------------------------------------------------

_GQL_TOKEN = re.compile(
    rb'"""(?:[^"\\]|\\.|"(?!""))*"""|"(?:[^"\\\n]|\\.)*"|#[^\n]*|[{}()]|[A-Za-z_][A-Za-z0-9_]*|.',
    re.S,
)


def graphql_operation_kinds(body: bytes) -> set[str]:
    """The kinds of the top-level definitions of a GraphQL request body: 'query',
    'mutation', 'subscription', 'fragment'; 'unreadable' when it cannot be read (a
    batch, not JSON, no query): treated as a write."""
    try:
        data = json.loads(body)
    except ValueError:
        return {"unreadable"}
    if not isinstance(data, dict) or not isinstance(data.get("query"), str):
        return {"unreadable"}
    kinds: set[str] = set()
    depth = 0
    named = False  # a keyword was seen: the next top-level `{` is its selection set
    for m in _GQL_TOKEN.finditer(data["query"].encode("utf-8")):
        tok = m.group(0)
        if tok in (b"{", b"("):
            if depth == 0 and tok == b"{":
                if not named:
                    kinds.add("query")  # the shorthand `{ ... }` is a query
                named = False
            depth += 1
        elif tok in (b"}", b")"):
            depth -= 1
            if depth < 0:
                return {"unreadable"}
        elif depth == 0 and tok in (b"query", b"mutation", b"subscription", b"fragment"):
            kinds.add(tok.decode())
            named = True
    kinds.discard("fragment")
    if depth != 0:
        return {"unreadable"}
    return kinds or {"unreadable"}
