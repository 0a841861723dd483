"""A connection the server drops as the request goes out (gunicorn's keep-alive close
racing the next request): a GET is sent once more on a new connection, a POST never."""

from __future__ import annotations

import json
import socket
import struct
import threading

import pytest
from flashpods_mcp.client import ApiClient
from flashpods_mcp.config import load_settings
from flashpods_mcp.errors import FlashpodsError

JOB = {"id": "job_aaaaaaaaaaaa", "status": "running", "kind": "worker"}


class ResetFirst:
    """Loopback HTTP server: resets its first connection after reading the request
    (RST, as a close with unread bytes does), answers every later one."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.requests: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}"

    def _serve(self) -> None:
        first = True
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                head = conn.recv(65536)
                self.requests.append(head.split(b"\r\n", 1)[0])
                if first:
                    first = False
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    continue  # closed with linger 0: a reset
                body = json.dumps({"job": JOB}).encode()
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                    + body
                )


@pytest.fixture
def server():
    s = ResetFirst()
    yield s
    s.listener.close()


def client(server, tmp_path) -> ApiClient:
    settings = load_settings(
        {"HOME": str(tmp_path), "FLASHPODS_API_URL": server.url, "FLASHPODS_API_TOKEN": "t"}
    )
    return ApiClient(settings)


def test_a_get_on_a_dropped_connection_is_sent_again(server, tmp_path):
    assert client(server, tmp_path).get_job(JOB["id"])["id"] == JOB["id"]
    assert [r.split(b" ")[0] for r in server.requests] == [b"GET", b"GET"]


def test_a_post_on_a_dropped_connection_is_never_sent_again(server, tmp_path):
    with pytest.raises(FlashpodsError, match="Cannot reach the Flashpods API"):
        client(server, tmp_path).create_job({"kind": "worker", "command": "true"})
    assert [r.split(b" ")[0] for r in server.requests] == [b"POST"]
