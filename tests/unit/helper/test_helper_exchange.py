"""The token exchange, run directly on the host against a stand-in token
service on a real unix socket."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import time

import pytest
from helper_standin import grant, http_response, secrets_body
from helper_support import base_env, run_helper

PRINT_TOKENS = ["--", "/bin/sh", "-c", 'printf "%s|%s" "$GITHUB_TOKEN" "$ANTHROPIC_API_KEY"']


def test_exec_sees_decoded_secrets_and_request_is_well_formed(helper, workdir, token_server):
    tricky = "ghp-a b\tc'\"$x\n=end"  # blanks, quotes, a newline, an '=': all survive
    server = token_server(grant({"GITHUB_TOKEN": tricky, "ANTHROPIC_API_KEY": "sk-ant-1"}))
    env = base_env(workdir, FLASHPODS_TOKEN_SOCKET=str(server.path))

    result = run_helper(helper, PRINT_TOKENS, env)

    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{tricky}|sk-ant-1"
    assert result.stderr == ""
    assert server.request_line() == "POST /v1/exchange HTTP/1.1"
    headers = server.headers()
    assert headers["accept"] == "text/plain"
    assert headers["content-length"] == "0"
    assert headers["connection"] == "close"
    assert headers["host"] == "localhost"
    assert "authorization" not in headers  # peer mode: the kernel attests


def test_binary_values_and_unpadded_base64(helper, workdir, token_server):
    value = bytes(range(1, 256))  # every byte but NUL
    unpadded = base64.b64encode(b"ab").decode().rstrip("=")
    body = f"BIN={base64.b64encode(value).decode()}\r\n\nSHORT={unpadded}\n".encode()
    server = token_server(lambda _req: http_response(200, body))
    env = base_env(workdir, FLASHPODS_TOKEN_SOCKET=str(server.path))

    result = subprocess.run(
        [str(helper), "--", "/bin/sh", "-c", 'printf "%s" "$BIN"; printf "|%s" "$SHORT"'],
        env=env,
        capture_output=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout == value + b"|ab"


def test_chunked_answer_is_decoded(helper, workdir, token_server):
    body = secrets_body({"GITHUB_TOKEN": "chunked-value"})
    half = len(body) // 2
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:half], body[half:]))
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
    server = token_server(lambda _req: answer)
    env = base_env(workdir, FLASHPODS_TOKEN_SOCKET=str(server.path))

    result = run_helper(helper, PRINT_TOKENS, env)

    assert result.returncode == 0, result.stderr
    assert result.stdout == "chunked-value|"


def test_role_granted_nothing_runs_without_secrets(helper, workdir, token_server):
    server = token_server(lambda _req: http_response(200, b""))
    env = base_env(workdir, FLASHPODS_TOKEN_SOCKET=str(server.path))

    result = run_helper(helper, PRINT_TOKENS, env)

    assert result.returncode == 0, result.stderr
    assert result.stdout == "|"


# One row per way the service can fail; each must stop the job with one line
# that says what failed, and never print a value.
REFUSALS = [
    # status refused by attestation
    (
        lambda _r: http_response(
            401,
            json.dumps({"error": "caller is not a job container", "code": "unattested"}).encode(),
            "application/json",
        ),
        "HTTP 401 (caller is not a job container)",
    ),
    # role not granted
    (
        lambda _r: http_response(
            403,
            json.dumps({"error": "not granted", "code": "forbidden"}).encode(),
            "application/json",
        ),
        "HTTP 403 (not granted)",
    ),
    # server error without a JSON body
    (lambda _r: http_response(500, b"boom"), "HTTP 500"),
    # hung up without a byte
    (lambda _r: b"", "closed the connection without answering"),
    # not HTTP at all
    (lambda _r: b"\x00\x01garbage that is not http\n", "is not HTTP"),
    # headers never end
    (lambda _r: b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n", "ended inside its headers"),
    # body shorter than announced
    (lambda _r: b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nA=QQ==\n", "cut short"),
    # JSON although text/plain was asked for: the line is not NAME=base64
    (
        lambda _r: http_response(
            200, b'{"tokens": {"GITHUB_TOKEN": "ghp-leak"}}', "application/json"
        ),
        "line 1 of the token service's answer is not NAME=<base64>",
    ),
    # a bad variable name
    (lambda _r: http_response(200, b"lower_case=Z2hwLWxlYWs=\n"), "line 1"),
    (lambda _r: http_response(200, b"GOOD=Z2hwLWxlYWs=\n1BAD=Z2hwLWxlYWs=\n"), "line 2"),
    (lambda _r: http_response(200, b"BAD-NAME=Z2hwLWxlYWs=\n"), "line 1"),
    (lambda _r: http_response(200, b"ghp-leak\n"), "line 1"),
    # a value that is not base64
    (
        lambda _r: http_response(200, b"GITHUB_TOKEN=ghp-leak!!\n"),
        "value for GITHUB_TOKEN (line 1) is not valid base64",
    ),
    # a value with a NUL cannot be an environment variable
    (
        lambda _r: http_response(
            200, b"GITHUB_TOKEN=" + base64.b64encode(b"ghp-leak\x00x") + b"\n"
        ),
        "GITHUB_TOKEN contains a NUL byte",
    ),
]


@pytest.mark.parametrize(("responder", "expected"), REFUSALS)
def test_refusals_exit_125_with_one_line(helper, workdir, token_server, responder, expected):
    server = token_server(responder)
    # A hang-up is retried like a busy service (test_helper_hangup.py); 1 s of retries
    # is enough to see that a service that keeps hanging up still fails the job.
    env = base_env(
        workdir, FLASHPODS_TOKEN_SOCKET=str(server.path), FLASHPODS_TOKEN_BUSY_WAIT_S="1"
    )

    result = run_helper(helper, ["--", "/bin/sh", "-c", "echo RAN"], env)

    assert result.returncode == 125
    assert result.stdout == ""  # the command never ran
    assert result.stderr.startswith("flashpods-init: ")
    assert result.stderr.count("\n") == 1
    assert expected in result.stderr
    assert "ghp-leak" not in result.stderr
    assert "Z2hwLWxlYWs" not in result.stderr


def test_bad_answer_sets_no_secret_at_all(helper, workdir, token_server):
    # The first line is fine, the second is not: optional mode must not run
    # the command with half of the secrets.
    body = secrets_body({"GITHUB_TOKEN": "first"}) + b"bad line\n"
    server = token_server(lambda _req: http_response(200, body))
    env = base_env(workdir, FLASHPODS_TOKEN_SOCKET=str(server.path), FLASHPODS_SECRETS="optional")

    result = run_helper(helper, PRINT_TOKENS, env)

    assert result.returncode == 0
    assert result.stdout == "|"


def test_silent_service_times_out(helper, workdir, token_server):
    server = token_server(lambda _req: None)  # accepts, never answers
    env = base_env(workdir, FLASHPODS_TOKEN_SOCKET=str(server.path), FLASHPODS_TOKEN_TIMEOUT_S="1")

    result = run_helper(helper, ["--", "/bin/true"], env, timeout=20)

    assert result.returncode == 125
    assert "did not answer within 1 s" in result.stderr


def test_oversized_answer_is_refused(helper, workdir, token_server):
    huge = b"A=" + b"QUFB" * (400 * 1024) + b"\n"  # 1.6 MB > the 1 MiB cap
    server = token_server(lambda _req: http_response(200, huge))
    env = base_env(workdir, FLASHPODS_TOKEN_SOCKET=str(server.path))

    result = run_helper(helper, ["--", "/bin/true"], env)

    assert result.returncode == 125
    assert "larger than 1048576 bytes" in result.stderr


def test_optional_mode_warns_and_continues(helper, workdir, token_server):
    server = token_server(lambda _r: http_response(403, b'{"error": "not granted"}'))
    env = base_env(workdir, FLASHPODS_TOKEN_SOCKET=str(server.path), FLASHPODS_SECRETS="optional")

    result = run_helper(helper, ["--", "/bin/sh", "-c", "echo RAN"], env)

    assert result.returncode == 0
    assert result.stdout == "RAN\n"
    assert result.stderr.startswith("flashpods-init: warning: ")
    assert "HTTP 403" in result.stderr
    assert "continuing without secrets" in result.stderr


def test_bad_secrets_policy_is_an_error(helper, workdir):
    env = base_env(workdir, FLASHPODS_SECRETS="maybe")

    result = run_helper(helper, ["--", "/bin/true"], env)

    assert result.returncode == 125
    assert "FLASHPODS_SECRETS must be 'required' or 'optional'" in result.stderr


def test_configured_socket_that_does_not_exist_fails(helper, workdir):
    env = base_env(
        workdir,
        FLASHPODS_TOKEN_SOCKET=str(workdir / "missing.sock"),
        FLASHPODS_TOKEN_TIMEOUT_S="1",
    )

    result = run_helper(helper, ["--", "/bin/true"], env)

    assert result.returncode == 125
    assert "missing.sock does not exist" in result.stderr
    assert "FLASHPODS_TOKEN_SOCKET" in result.stderr


def test_socket_without_listener_fails(helper, workdir):
    # A socket file nobody listens on (a dead token service).
    path = workdir / "dead.sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.close()
    env = base_env(workdir, FLASHPODS_TOKEN_SOCKET=str(path), FLASHPODS_TOKEN_TIMEOUT_S="1")

    result = run_helper(helper, ["--", "/bin/true"], env)

    assert result.returncode == 125
    assert "cannot connect to the token service" in result.stderr
    assert "Connection refused" in result.stderr


def test_service_that_starts_late_is_waited_for(helper, workdir, token_server):
    # The socket appears while the helper is already retrying (a token
    # service restart must not fail the jobs that start meanwhile).
    path = workdir / "late.sock"
    env = base_env(workdir, FLASHPODS_TOKEN_SOCKET=str(path), FLASHPODS_TOKEN_TIMEOUT_S="10")
    proc = subprocess.Popen(
        [str(helper), *PRINT_TOKENS],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.7)
    token_server(grant({"GITHUB_TOKEN": "late"}), name="late.sock")
    out, err = proc.communicate(timeout=30)

    assert proc.returncode == 0, err
    assert out == "late|"


def test_unset_socket_and_no_default_socket_runs_without_secrets(helper, workdir):
    # In a private mount namespace with an empty /run, the default socket
    # /run/flashpods/token.sock surely does not exist.
    env = base_env(workdir)
    script = 'mount -t tmpfs tmpfs /run && exec "$0" "$@"'
    result = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "/bin/sh",
            "-c",
            script,
            str(helper),
            *PRINT_TOKENS,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout == "|"
    assert result.stderr == ""


def test_unset_socket_uses_the_default_path(helper, workdir, token_server):
    # With FLASHPODS_TOKEN_SOCKET unset the helper asks /run/flashpods/token.sock:
    # bind our stand-in there inside a private mount namespace.
    server = token_server(grant({"GITHUB_TOKEN": "from-default"}))
    env = base_env(workdir)
    script = (
        "mount -t tmpfs tmpfs /run && mkdir /run/flashpods && touch /run/flashpods/token.sock && "
        f'mount --bind {server.path} /run/flashpods/token.sock && exec "$0" "$@"'
    )
    result = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "/bin/sh",
            "-c",
            script,
            str(helper),
            *PRINT_TOKENS,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout == "from-default|"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("soon", "FLASHPODS_TOKEN_TIMEOUT_S=soon is not a whole number of seconds"),
        ("-1", "FLASHPODS_TOKEN_TIMEOUT_S=-1 is not a whole number of seconds"),
        ("99999", "between 0 and 3600"),
        ("0", "FLASHPODS_TOKEN_TIMEOUT_S must be at least 1 second"),
    ],
)
def test_bad_timeout_value_is_an_error(helper, workdir, token_server, value, message):
    server = token_server(grant({}))
    env = base_env(
        workdir, FLASHPODS_TOKEN_SOCKET=str(server.path), FLASHPODS_TOKEN_TIMEOUT_S=value
    )

    result = run_helper(helper, ["--", "/bin/true"], env)

    assert result.returncode == 125
    assert message in result.stderr


def test_unknown_attestation_mode_is_an_error(helper, workdir, token_server):
    server = token_server(grant({}))
    env = base_env(workdir, FLASHPODS_TOKEN_SOCKET=str(server.path), FLASHPODS_ATTESTATION="magic")

    result = run_helper(helper, ["--", "/bin/true"], env)

    assert result.returncode == 125
    assert "FLASHPODS_ATTESTATION must be 'peer' or 'spire'" in result.stderr


def test_path_too_long_for_a_unix_socket(helper, workdir):
    env = base_env(workdir, FLASHPODS_TOKEN_SOCKET="/" + "x" * 200)

    result = run_helper(helper, ["--", "/bin/true"], env)

    assert result.returncode == 125
    assert "too long for a unix socket" in result.stderr
