"""Stand-ins the helper talks to in tests: a token service on a unix socket
and a `spire-agent` CLI script. Both are real processes/sockets; only their
answers are scripted."""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import stat
import threading
from collections.abc import Callable
from pathlib import Path

# Scripted answer: raw bytes to send, or None to accept and never answer.
Responder = Callable[[bytes], bytes | None]


def http_response(status: int, body: bytes, content_type: str = "text/plain") -> bytes:
    reason = {200: "OK", 401: "UNAUTHORIZED", 403: "FORBIDDEN", 500: "INTERNAL SERVER ERROR"}
    head = (
        f"HTTP/1.1 {status} {reason.get(status, 'X')}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


def secrets_body(secrets: dict[str, bytes | str]) -> bytes:
    """The text/plain exchange answer: one NAME=<base64> line per secret."""
    lines = []
    for name, value in secrets.items():
        raw = value.encode() if isinstance(value, str) else value
        lines.append(f"{name}={base64.b64encode(raw).decode()}\n")
    return "".join(lines).encode()


def grant(secrets: dict[str, bytes | str]) -> Responder:
    return lambda _request: http_response(200, secrets_body(secrets))


class TokenServer:
    """Answers each connection on a unix socket with responder(request)."""

    def __init__(self, path: Path, responder: Responder, mode: int = 0o600) -> None:
        self.path = path
        self.responder = responder
        self.requests: list[bytes] = []
        self._hung: list[socket.socket] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(str(path))
        os.chmod(path, mode)
        self._sock.listen(16)
        # Set before the thread starts: a test that closes at once must not race
        # the thread's first use of the socket.
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(5)
            request = b""
            try:
                while b"\r\n\r\n" not in request:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    request += chunk
            except OSError:
                pass
            self.requests.append(request)
            answer = self.responder(request)
            if answer is None:
                self._hung.append(conn)  # keep it open, say nothing
                continue
            # The helper may hang up early on an oversized answer.
            with contextlib.suppress(OSError):
                conn.sendall(answer)
            conn.close()

    def headers(self, index: int = -1) -> dict[str, str]:
        lines = self.requests[index].decode().split("\r\n")
        out = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                out[name.strip().lower()] = value.strip()
        return out

    def request_line(self, index: int = -1) -> str:
        return self.requests[index].decode().split("\r\n", 1)[0]

    def close(self) -> None:
        self._stop.set()
        self._sock.close()
        self._thread.join(timeout=5)
        for conn in self._hung:
            conn.close()
        if self.path.exists() and stat.S_ISSOCK(self.path.lstat().st_mode):
            self.path.unlink()


# The real CLI's default ("pretty") output, from spiffe/spire
# cmd/spire-agent/cli/api/fetch_jwt.go printPrettyResult:
#   token(<spiffe id>):\n\t<jwt>\n [hint(<id>):\n\t<hint>\n] bundle(<td>):\n\t<jwks>\n
def pretty_jwt_output(spiffe_id: str, jwt: str) -> str:
    return (
        f"token({spiffe_id}):\n\t{jwt}\n"
        f"bundle(spiffe://flashpods.internal):\n\t"
        '{"keys":[{"kty":"EC","kid":"k1","crv":"P-256","x":"AA","y":"AA"}]}\n'
    )


def write_agent_script(
    path: Path,
    *,
    output: str,
    fail_times: int = 0,
    always_fail: bool = False,
    state_dir: str | None = None,
) -> Path:
    """A `spire-agent` stand-in: records its argv, fails `fail_times` times
    the way the real CLI does when the agent is not ready (an error line on
    stderr, exit 1), then prints `output`. Works with busybox sh. state_dir is
    where the script keeps its call count and argv log, as the script sees it
    (a container path when it runs in a container); default: next to it."""
    where = state_dir or str(path.parent)
    state = f"{where}/{path.name}.state"
    calls = f"{where}/{path.name}.calls"
    # What the real CLI prints when the agent socket is not there yet.
    not_ready = (
        "rpc error: code = Unavailable desc = connection error: "
        "dial unix: connect: no such file or directory"
    )
    fail_branch = "true" if always_fail else f'[ "$n" -le {fail_times} ]'
    script = f"""#!/bin/sh
n=$(cat {state} 2>/dev/null || echo 0)
n=$((n + 1))
echo "$n" > {state}
printf '%s\\n' "$*" >> {calls}
if {fail_branch}; then
    echo '{not_ready}' >&2
    exit 1
fi
cat <<'OUT'
{output}OUT
"""
    path.write_text(script)
    path.chmod(0o755)
    return path


def agent_calls(path: Path, state_dir: Path | None = None) -> list[str]:
    calls = (state_dir or path.parent) / (path.name + ".calls")
    return calls.read_text().splitlines() if calls.exists() else []


class CountingService:
    """A token service on a unix socket that numbers its connections: `answer(n, conn)`
    decides what connection n (from 1) gets. Used for the refusals a real service gives
    before its answer (busy, rate limited, killed mid-exchange)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.connections = 0
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(str(path))
        self._sock.listen(16)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def answer(self, n: int, conn: socket.socket) -> None:
        raise AssertionError("subclasses say what each connection gets")

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                self.answer(self.connections, conn)

    def close(self) -> None:
        self._sock.close()


def read_request_head(conn: socket.socket) -> bytes:
    """The request up to its blank line (or what came before the caller hung up)."""
    conn.settimeout(5)
    request = b""
    while b"\r\n\r\n" not in request:
        chunk = conn.recv(4096)
        if not chunk:
            break
        request += chunk
    return request
