"""flashpods-init and a token service that dies mid-exchange (found by the kill -9 soak,
tests/integration/hostile/soak.py): the service read the request and was SIGKILLed, so
the connection closes without a byte of answer. Its restarted successor answers a retry;
the helper retries such a hang-up as it retries a busy service, within
FLASHPODS_TOKEN_BUSY_WAIT_S, instead of failing the job with exit 125."""

from __future__ import annotations

import socket
from pathlib import Path

from helper_standin import CountingService, http_response, read_request_head, secrets_body
from helper_support import base_env, run_helper

PRINT_TOKEN = ["--", "/bin/sh", "-c", 'printf "%s" "$GITHUB_TOKEN"']


class DyingService(CountingService):
    """Reads the first `deaths` requests whole and hangs up without answering (what a
    SIGKILL of the service leaves its callers with), then grants like the real one."""

    def __init__(self, path: Path, deaths: int) -> None:
        self.deaths = deaths
        super().__init__(path)

    def answer(self, n: int, conn: socket.socket) -> None:
        read_request_head(conn)
        if n > self.deaths:
            conn.sendall(http_response(200, secrets_body({"GITHUB_TOKEN": "ghp-reborn"})))


def test_a_service_that_hangs_up_without_answering_is_retried(helper, workdir):
    service = DyingService(workdir / "token.sock", deaths=2)
    try:
        env = base_env(workdir, FLASHPODS_TOKEN_SOCKET=str(service.path))
        result = run_helper(helper, PRINT_TOKEN, env)
    finally:
        service.close()
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ghp-reborn"
    assert service.connections == 3


def test_one_that_never_answers_fails_with_one_line_after_the_wait(helper, workdir):
    service = DyingService(workdir / "token.sock", deaths=10**6)
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
    assert "closed the connection without answering" in result.stderr
    assert 2 <= service.connections < 20  # retried, with a pause between tries
