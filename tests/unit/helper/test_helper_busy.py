"""flashpods-init and a busy token service (issue 14): the service answers 503 "busy"
(too many connections, in all or from this job) or 429 at accept time, without reading
the request, and hangs up; the helper retries for FLASHPODS_TOKEN_BUSY_WAIT_S."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from helper_standin import CountingService, http_response, read_request_head, secrets_body
from helper_support import base_env, run_helper

PRINT_TOKEN = ["--", "/bin/sh", "-c", 'printf "%s" "$GITHUB_TOKEN"']
BUSY = http_response(
    503, json.dumps({"error": "the token service is busy", "code": "busy"}).encode(),
    "application/json",
)  # fmt: skip
RATE_LIMITED = http_response(
    429, json.dumps({"error": "too many", "code": "rate_limited"}).encode(), "application/json"
)


class BusyService(CountingService):
    """Answers the first `busy` connections the way the real service refuses over its
    caps (answer at once, never read, hang up), then grants like the real one."""

    def __init__(self, path: Path, busy: int, refusal: bytes = BUSY) -> None:
        self.busy = busy
        self.refusal = refusal
        super().__init__(path)

    def answer(self, n: int, conn: socket.socket) -> None:
        if n <= self.busy:
            conn.send(self.refusal)
            return
        read_request_head(conn)
        conn.sendall(http_response(200, secrets_body({"GITHUB_TOKEN": "ghp-after-busy"})))


def test_busy_service_is_retried_until_it_answers(helper, workdir):
    service = BusyService(workdir / "token.sock", busy=3)
    try:
        env = base_env(workdir, FLASHPODS_TOKEN_SOCKET=str(service.path))
        result = run_helper(helper, PRINT_TOKEN, env)
    finally:
        service.close()
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ghp-after-busy"
    assert service.connections == 4


def test_rate_limited_is_retried_too(helper, workdir):
    service = BusyService(workdir / "token.sock", busy=1, refusal=RATE_LIMITED)
    try:
        env = base_env(workdir, FLASHPODS_TOKEN_SOCKET=str(service.path))
        result = run_helper(helper, PRINT_TOKEN, env)
    finally:
        service.close()
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ghp-after-busy"


def test_a_service_busy_for_too_long_fails_with_one_line(helper, workdir):
    service = BusyService(workdir / "token.sock", busy=10**6)
    try:
        env = base_env(
            workdir, FLASHPODS_TOKEN_SOCKET=str(service.path), FLASHPODS_TOKEN_BUSY_WAIT_S="1"
        )
        result = run_helper(helper, PRINT_TOKEN, env, timeout=30)
    finally:
        service.close()
    assert result.returncode == 125
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert "HTTP 503 (the token service is busy)" in result.stderr
    assert "still busy after 1 s of retries" in result.stderr
    assert 2 <= service.connections < 20  # retried, with a pause between tries


def test_busy_wait_zero_means_no_retry(helper, workdir):
    service = BusyService(workdir / "token.sock", busy=1)
    try:
        env = base_env(
            workdir, FLASHPODS_TOKEN_SOCKET=str(service.path), FLASHPODS_TOKEN_BUSY_WAIT_S="0"
        )
        result = run_helper(helper, PRINT_TOKEN, env)
    finally:
        service.close()
    assert result.returncode == 125
    assert "HTTP 503" in result.stderr
    assert service.connections == 1
