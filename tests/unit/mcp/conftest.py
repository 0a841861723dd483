"""Loopback fakes for the unit tests: an HTTP server and a real rsync daemon."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from contextlib import asynccontextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from mcp.client.stdio import stdio_client
from mcp.types import ListRootsResult, Root
from pydantic import FileUrl

from mcp import ClientSession, StdioServerParameters


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeApi:
    """Answers from `routes`: {(method, path): (status, body, headers) or callable}."""

    def __init__(self):
        self.routes: dict = {}
        self.requests: list[dict] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _serve(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path = self.path.split("?", 1)[0]
                fake.requests.append(
                    {
                        "method": self.command,
                        "path": self.path,
                        "auth": self.headers.get("Authorization"),
                        "json": json.loads(body) if body else None,
                    }
                )
                answer = fake.routes.get((self.command, path), (404, {"error": "no route"}))
                if callable(answer):
                    answer = answer(self)
                    if answer is None:
                        return
                status, payload, *rest = answer
                headers = rest[0] if rest else {}
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header(
                    "Content-Type",
                    "application/json" if not isinstance(payload, bytes) else "text/plain",
                )
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _serve

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_api():
    api = FakeApi()
    yield api
    api.close()


class RsyncDaemon:
    def __init__(self, root):
        self.root = root
        self.uploads = root / "uploads"
        self.uploads.mkdir(parents=True)
        self.port = free_port()
        conf = root / "rsyncd.conf"
        conf.write_text(
            "use chroot = no\n"
            "uid = root\ngid = root\n"
            f"pid file = {root}/rsyncd.pid\n"
            f"[uploads]\npath = {self.uploads}\nread only = no\n"
        )
        self.process = subprocess.Popen(
            [
                "rsync",
                "--daemon",
                "--no-detach",
                f"--config={conf}",
                f"--port={self.port}",
                "--address=127.0.0.1",
                f"--log-file={root}/rsyncd.log",
            ]
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError("rsync daemon did not start")
        self.url = f"rsync://127.0.0.1:{self.port}/uploads"

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=10)


@pytest.fixture
def rsync_daemon(tmp_path):
    daemon = RsyncDaemon(tmp_path / "rsyncd")
    yield daemon
    daemon.stop()


@pytest.fixture
def unused_port() -> int:
    """A loopback port with nothing listening on it."""
    return free_port()


VENV_BIN = Path(sys.executable).parent


@asynccontextmanager
async def mcp_session(env: dict[str, str], roots: list[Path] | None):
    """A real MCP client session (the SDK's stdio client) with `flashpods-mcp`.

    `roots=None`: a client without the roots capability.
    """
    params = StdioServerParameters(
        command=str(VENV_BIN / "flashpods-mcp"),
        env={"PATH": os.environ["PATH"], **env},
    )

    async def list_roots(_ctx) -> ListRootsResult:
        return ListRootsResult(roots=[Root(uri=FileUrl(p.as_uri()), name=p.name) for p in roots])

    async with (
        stdio_client(params) as (read, write),
        ClientSession(
            read, write, list_roots_callback=list_roots if roots is not None else None
        ) as session,
    ):
        await session.initialize()
        yield session


def tool_text(result) -> str:
    return "\n".join(c.text for c in result.content if getattr(c, "type", "") == "text")


@pytest.fixture
def open_mcp():
    """The session factory, as a fixture (test modules cannot import conftest safely)."""
    return mcp_session
