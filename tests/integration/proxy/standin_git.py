"""A stand-in GitHub git server: real `git http-backend` (smart HTTP) behind the
stand-in HTTPS origin (standin_https.py), which checks the token as GitHub does (Basic
password or Bearer/token) and records what arrived.

Repositories live under `root` as bare repos (`o/r.git`); a request without
credentials gets GitHub's 401 challenge, a wrong token a 401 too.
"""

from __future__ import annotations

import base64
import os
import subprocess
from http.server import BaseHTTPRequestHandler
from pathlib import Path

GIT_SERVICES = ("/info/refs", "/git-upload-pack", "/git-receive-pack")
MAX_BODY = 256 << 20


def _run(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True, timeout=60
    ).stdout


class GitBackend:
    def __init__(self, root: Path, token: str):
        self.root = root
        self.token = token

    def create_repo(self, name: str = "o/r.git") -> Path:
        """A bare repo with one commit on main (README)."""
        bare = self.root / name
        _run("init", "-q", "--bare", "-b", "main", str(bare))
        _run("config", "http.receivepack", "true", cwd=bare)
        work = self.root / (name + ".seed")
        _run("init", "-q", "-b", "main", str(work))
        (work / "README").write_text("stand-in repository\n")
        ident = ["-c", "user.name=seed", "-c", "user.email=seed@example.invalid"]
        _run(*ident, "-C", str(work), "add", "README")
        _run(*ident, "-C", str(work), "commit", "-q", "-m", "seed")
        _run("-C", str(work), "push", "-q", str(bare), "main")
        return bare

    def refs(self, name: str = "o/r.git") -> dict[str, str]:
        out = _run("for-each-ref", "--format=%(refname) %(objectname)", cwd=self.root / name)
        return {ref: oid for ref, oid in (line.split(" ", 1) for line in out.splitlines())}

    @staticmethod
    def wants(path: str) -> bool:
        return any(s in path.split("?", 1)[0] for s in GIT_SERVICES)

    def authorized(self, header: str | None) -> bool | None:
        """None: no credentials; else whether they carry our token."""
        if not header:
            return None
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "basic":
            try:
                _, _, password = base64.b64decode(value).decode().partition(":")
            except ValueError:
                return False
            return password == self.token
        return scheme.lower() in ("bearer", "token") and value.strip() == self.token

    def serve(self, handler: BaseHTTPRequestHandler, record: dict) -> None:
        # As GitHub's front ends do: a request that says close gets an answer that says
        # so (the proxy asks upstream for close; curl would otherwise reuse the socket).
        if handler.headers.get("Connection", "").lower() == "close":
            handler.close_connection = True
        body = _read_body(handler)
        record["body"] = body[:4096]
        auth = self.authorized(handler.headers.get("Authorization"))
        record["auth_ok"] = auth
        if not auth:
            handler.send_response(401)
            if handler.close_connection:
                handler.send_header("Connection", "close")
            handler.send_header("WWW-Authenticate", 'Basic realm="GitHub"')
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        path, _, query = handler.path.partition("?")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": str(self.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "REMOTE_USER": "x-access-token",
            "REMOTE_ADDR": "203.0.113.1",
            "REQUEST_METHOD": handler.command,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "CONTENT_TYPE": handler.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "GIT_PROTOCOL": handler.headers.get("Git-Protocol", ""),
            "HTTP_CONTENT_ENCODING": handler.headers.get("Content-Encoding", ""),
            "HOME": str(self.root),
        }
        done = subprocess.run(
            ["git", "http-backend"], input=body, env=env, capture_output=True, timeout=120
        )
        head, _, out = done.stdout.partition(b"\r\n\r\n")
        if not _:
            head, _, out = done.stdout.partition(b"\n\n")
        status = 200
        headers = []
        for line in head.decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.strip().split(" ")[0])
            elif name:
                headers.append((name, value.strip()))
        record["status"] = status
        handler.send_response(status)
        if handler.close_connection:
            handler.send_header("Connection", "close")
        for name, value in headers:
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(out)))
        handler.end_headers()
        handler.wfile.write(out)


def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
    if "chunked" in handler.headers.get("Transfer-Encoding", "").lower():
        body = bytearray()
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return bytes(body)
            body += handler.rfile.read(size)
            handler.rfile.readline()
            if len(body) > MAX_BODY:
                raise ValueError("stand-in: body too large")
    length = int(handler.headers.get("Content-Length") or 0)
    return handler.rfile.read(length) if length else b""
