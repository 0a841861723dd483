"""The HTTP layer and the exchange rules: policy 403, text format, audit lines,
rate limit, size caps, timeouts, socket permissions, configuration errors."""

from __future__ import annotations

import base64
import contextlib
import grp
import json
import os
import socket
import stat
import time

import pytest
from conftest import SECRETS, base_config, exchange
from flashpods_token.config import ConfigError, parse_config
from flashpods_token.verify_spire import parse_jwks

JOB = "job_policytest12"


@pytest.fixture
def worker(podman):
    podman.add_job(JOB, "worker")
    return JOB


def test_worker_asking_for_an_agent_token_gets_403(spire_server, ca, worker):
    token = ca.mint(ca.spiffe_id(JOB))
    status, body, _ = exchange(
        spire_server.socket, token=token, body={"tokens": ["ANTHROPIC_API_KEY"]}
    )
    assert status == 403
    assert body == {
        "error": "role worker may not have ANTHROPIC_API_KEY",
        "code": "forbidden",
        "refused": ["ANTHROPIC_API_KEY"],
    }
    # Asking for an allowed one plus a forbidden one is refused as a whole.
    status, body, _ = exchange(
        spire_server.socket, token=token, body={"tokens": ["GITHUB_TOKEN", "ANTHROPIC_API_KEY"]}
    )
    assert status == 403 and "tokens" not in body
    last = spire_server.audit_lines()[-1]
    assert last["outcome"] == "forbidden" and last["check"] == "policy"
    assert last["refused"] == ["ANTHROPIC_API_KEY"] and last["granted"] == []


def test_asking_for_a_subset_gets_exactly_that(spire_server, ca, podman):
    podman.add_job(JOB, "sub_agent")
    token = ca.mint(ca.spiffe_id(JOB, "sub_agent"))
    status, body, _ = exchange(spire_server.socket, token=token, body={"tokens": ["GITHUB_TOKEN"]})
    assert status == 200 and body["tokens"] == {"GITHUB_TOKEN": SECRETS["GITHUB_TOKEN"]}


def test_text_plain_answer_is_name_equals_base64_lines(spire_server, ca, podman):
    podman.add_job(JOB, "sub_agent")
    token = ca.mint(ca.spiffe_id(JOB, "sub_agent"))
    status, text, headers = exchange(spire_server.socket, token=token, accept="text/plain")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    lines = text.splitlines()
    assert text.endswith("\n") and len(lines) == 2
    pairs = (line.split("=", 1) for line in lines)
    decoded = {name: base64.b64decode(value).decode() for name, value in pairs}
    assert decoded == SECRETS


def test_secret_file_is_read_at_exchange_time(spire_server, ca, worker, secret_files):
    token = ca.mint(ca.spiffe_id(JOB))
    with open(secret_files["GITHUB_TOKEN"], "w") as fh:
        fh.write("ghp-rotated-value")
    assert exchange(spire_server.socket, token=token)[1]["tokens"]["GITHUB_TOKEN"] == (
        "ghp-rotated-value"
    )
    os.unlink(secret_files["GITHUB_TOKEN"])
    status, body, _ = exchange(spire_server.socket, token=token)
    assert status == 503 and body["code"] == "secret_unavailable"
    assert "GITHUB_TOKEN" in body["error"]


def test_audit_lines_are_json_with_the_fields_and_never_values(spire_server, ca, podman):
    podman.add_job(JOB, "sub_agent")
    token = ca.mint(ca.spiffe_id(JOB, "sub_agent"))
    exchange(spire_server.socket, token=token)
    exchange(spire_server.socket, token="garbage")
    raw = spire_server.audit_path.read_text()
    for value in SECRETS.values():
        assert value not in raw
    granted, refused = [json.loads(line) for line in raw.splitlines()]
    assert set(granted) >= {"time", "spiffe_id", "job", "granted", "refused", "outcome"}
    assert granted["spiffe_id"] == f"spiffe://flashpods.internal/job/{JOB}/sub_agent"
    assert granted["job"] == JOB and granted["outcome"] == "granted"
    assert granted["granted"] == ["ANTHROPIC_API_KEY", "GITHUB_TOKEN"]
    assert refused["outcome"] == "unauthenticated" and refused["spiffe_id"] is None
    assert stat.S_IMODE(os.stat(spire_server.audit_path).st_mode) == 0o640


@pytest.mark.parametrize(
    "name",
    [
        'X"}\n{"outcome":"granted","spiffe_id":"spiffe://flashpods.internal/job/x/sub_agent',
        "GITHUB_TOKEN\nFAKE",
        "lower_case",
        "A" * 65,
    ],
)
def test_caller_chosen_names_cannot_forge_audit_lines(spire_server, ca, worker, name):
    before = len(spire_server.audit_lines())
    status, body, _ = exchange(
        spire_server.socket, token=ca.mint(ca.spiffe_id(JOB)), body={"tokens": [name]}
    )
    assert status == 400 and body["code"] == "bad_request"
    lines = spire_server.audit_path.read_text().splitlines()
    assert len(lines) == before + 1  # exactly one line, and it parses
    entry = json.loads(lines[-1])
    assert entry["outcome"] == "bad_request" and entry["granted"] == []
    # Attested before the body is read: the failure is charged to the caller's job.
    assert entry["spiffe_id"] == ca.spiffe_id(JOB)
    assert "\n" not in lines[-1] and 'outcome":"granted' not in lines[-1]


def test_rate_limit_per_identity(tmp_path, secret_files, podman, bundle_file, start_server, ca):
    cfg = base_config(
        tmp_path,
        secret_files,
        podman,
        spire={"bundle_file": str(bundle_file)},
        rate_limit={"per_s": 0.5, "burst": 3},
    )
    server = start_server(cfg)
    podman.add_job(JOB, "worker")
    podman.add_job("job_otherjob1234", "worker")
    token = ca.mint(ca.spiffe_id(JOB))
    statuses = [exchange(server.socket, token=token)[0] for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    status, body, headers = exchange(server.socket, token=token)
    assert status == 429 and int(headers["Retry-After"]) >= 1
    # Another identity is not starved by the first.
    other = ca.mint(ca.spiffe_id("job_otherjob1234"))
    assert exchange(server.socket, token=other)[0] == 200
    assert server.audit_lines()[-2]["outcome"] == "rate_limited"


def _raw(path: str, data: bytes, read_timeout: float = 10) -> tuple[bytes, float]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(read_timeout)
    s.connect(path)
    start = time.monotonic()
    with contextlib.suppress(BrokenPipeError):
        s.sendall(data)
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    s.close()
    return out, time.monotonic() - start


def test_oversized_headers_get_431(spire_server):
    big = b"POST /v1/exchange HTTP/1.1\r\nX-Pad: " + b"a" * 20000 + b"\r\n\r\n"
    out, _ = _raw(spire_server.socket, big)
    assert out.startswith(b"HTTP/1.1 431")


def test_oversized_body_gets_413_without_reading_it(spire_server):
    head = b"POST /v1/exchange HTTP/1.1\r\nContent-Length: 100000\r\n\r\n"
    out, _ = _raw(spire_server.socket, head + b"{" * 5000)
    assert out.startswith(b"HTTP/1.1 413")


def test_chunked_body_is_refused(spire_server):
    out, _ = _raw(
        spire_server.socket,
        b"POST /v1/exchange HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    assert out.startswith(b"HTTP/1.1 411")


def test_slow_client_is_cut_off(tmp_path, secret_files, podman, bundle_file, start_server):
    cfg = base_config(
        tmp_path,
        secret_files,
        podman,
        spire={"bundle_file": str(bundle_file)},
        limits={"read_timeout_s": 0.5},
    )
    server = start_server(cfg)
    # Sends half a request line and then nothing.
    out, elapsed = _raw(server.socket, b"POST /v1/exch")
    assert elapsed < 3
    assert out == b"" or out.startswith(b"HTTP/1.1 408")


def test_drip_feeding_client_hits_the_total_deadline(
    tmp_path, secret_files, podman, bundle_file, start_server
):
    cfg = base_config(
        tmp_path,
        secret_files,
        podman,
        spire={"bundle_file": str(bundle_file)},
        limits={"read_timeout_s": 0.5},
    )
    server = start_server(cfg)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(server.socket)
    s.sendall(b"POST /v1/exchange HTTP/1.1\r\n")
    start = time.monotonic()
    answer = b""
    try:
        for _ in range(20):  # one header line every 0.3 s: each read is within the timeout
            s.sendall(b"X-A: b\r\n")
            time.sleep(0.3)
    except (BrokenPipeError, ConnectionResetError):
        pass
    with contextlib.suppress(ConnectionResetError, TimeoutError):
        answer = s.recv(4096)
    s.close()
    assert time.monotonic() - start < 6.5
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408")


def test_unknown_route_and_method(spire_server):
    out, _ = _raw(spire_server.socket, b"GET /v1/exchange HTTP/1.1\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 404")
    out, _ = _raw(spire_server.socket, b"DELETE /v1/exchange HTTP/1.1\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 405")
    out, _ = _raw(spire_server.socket, b"\x00\x01garbage\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400")


@pytest.mark.root  # gives the socket to group flashpods
def test_socket_is_0660_with_the_configured_group_and_no_tcp(
    tmp_path, secret_files, podman, bundle_file, start_server
):
    group = grp.getgrnam("flashpods")
    cfg = base_config(
        tmp_path,
        secret_files,
        podman,
        spire={"bundle_file": str(bundle_file)},
        socket_group="flashpods",
    )
    server = start_server(cfg)
    st = os.stat(server.socket)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert st.st_gid == group.gr_gid and st.st_uid == os.geteuid()
    assert server.server.socket.family == socket.AF_UNIX
    # No private bind directory is left behind.
    assert [p for p in os.listdir(os.path.dirname(server.socket)) if p.startswith(".token")] == []


def test_a_second_service_on_the_same_socket_refuses_to_start(
    spire_server, tmp_path, secret_files, podman, bundle_file, start_server
):
    with pytest.raises(SystemExit, match="another service is listening"):
        start_server(dict(spire_server.config))


def test_stale_socket_is_replaced(tmp_path, secret_files, podman, bundle_file, start_server):
    cfg = base_config(tmp_path, secret_files, podman, spire={"bundle_file": str(bundle_file)})
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(cfg["socket"])
    stale.close()  # bound, never listening: a dead service's leftover
    server = start_server(cfg)
    assert exchange(server.socket)[0] == 401


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"sockt": "/x"}, "unknown key 'sockt'"),
        ({"mode": "trust-me"}, "mode must be one of"),
        ({"roles": {"worker": ["NOPE"]}}, "has no entry in secrets"),
        ({"roles": {"admin": []}}, "unknown key 'admin'"),
        # The sub-agent role is spelled sub_agent; old spellings name the new one.
        ({"roles": {"agent": []}}, "roles.agent is an old name .* write roles.sub_agent"),
        ({"roles": {"subagent": []}}, "roles.subagent is an old name .* roles.sub_agent"),
        ({"roles": {"sub-agent": []}}, "roles.sub-agent is an old name .* roles.sub_agent"),
        ({"secrets": {"GITHUB_TOKEN": "relative/path"}}, "absolute file path"),
        ({"podman_url": "http://127.0.0.1:8080"}, "unix:///path"),
        ({"spire": {"bundle_file": None, "agent_socket": None}}, "exactly one of"),
        ({"spire": {"bundle_file": "/b", "audiance": "x"}}, "unknown key 'audiance'"),
        ({"limits": {"max_body": 1}}, "unknown key 'max_body'"),
    ],
)
def test_config_errors_name_what_to_change(tmp_path, secret_files, podman, patch, message):
    cfg = base_config(tmp_path, secret_files, podman, spire={"bundle_file": "/b"})
    cfg.update(patch)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        parse_config(cfg)


def test_workload_api_bundle_without_use_is_accepted_and_x509_keys_skipped(ca):
    assert set(parse_jwks(ca.workload_api_bundle())) == {ca.ec_kid, ca.rsa_kid}
    server_keys = parse_jwks(ca.server_bundle())
    assert set(server_keys) == {ca.ec_kid, ca.rsa_kid}  # the x509-svid entry has no kid
    assert server_keys[ca.ec_kid].algorithms == ("ES256",)
    assert "HS256" not in server_keys[ca.rsa_kid].algorithms
