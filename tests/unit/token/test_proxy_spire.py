"""The credential proxy in spire mode: the job is taken from the JWT-SVID it presents
(Proxy-Authorization: Bearer), verified like the token service's but for the audience
`flashpods-proxy`. The real proxy on a unix socket, SVIDs from the test CA (SPIRE will
not mint forgeries; tests/integration/proxy/test_proxy_spire.py has the real agent).

An accepted SVID shows as the next check's answer: CONNECT to the metadata address is
refused by the egress rule (403 egress_refused), which only an attested job reaches.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import base_config, exchange
from flashpods_token.config import ConfigError, parse_config
from flashpods_token.proxy_cli import build_proxy
from test_token_forged_svid import FORGERIES, JOB

TEMPLATE = Path(__file__).resolve().parents[3] / "modules" / "flashpods" / "firewall.nft.in"
AUD = "flashpods-proxy"
METADATA = "169.254.169.254:80"


@pytest.fixture
def proxy(tmp_path, secret_files, podman, bundle_file):
    cfg = base_config(
        tmp_path,
        secret_files,
        podman,
        spire={"bundle_file": str(bundle_file), "agent_socket": None},
        env_delivery=[],
        proxy={
            "socket": str(Path(podman.path).parent / "proxy.sock"),
            "ca_dir": str(tmp_path / "ca"),
            "firewall_template": str(TEMPLATE),
            "rules": {"GITHUB_TOKEN": ["api.github.com"], "ANTHROPIC_API_KEY": ["m.example"]},
            "static_hosts": {"api.github.com": "127.0.0.1"},
            "read_timeout_s": 3,
        },
    )
    server, attestor, audit = build_proxy(parse_config(cfg))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    attestor.close()
    audit.close()


def connect(path: str, target: str, *headers: str) -> tuple[int, dict]:
    """CONNECT with these extra header lines; (status, the refusal's JSON body)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(path)
        extra = "".join(f"{h}\r\n" for h in headers)
        s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{extra}\r\n".encode())
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body) if body else {}


def bearer(token: str) -> str:
    return f"Proxy-Authorization: Bearer {token}"


def svid(ca, *aud: str) -> str:
    return ca.mint(ca.spiffe_id(JOB), aud=list(aud or [AUD]))


def test_a_running_jobs_svid_is_accepted_and_the_job_logged(proxy, ca, podman, capfd):
    podman.add_job(JOB, "worker")
    status, body = connect(
        proxy.server_address, METADATA, bearer(ca.mint(ca.spiffe_id(JOB), aud=[AUD]))
    )
    assert (status, body["code"]) == (403, "egress_refused"), body
    # The same on an RS256 SVID, and with the scheme spelled in another case.
    token = ca.mint(ca.spiffe_id(JOB), alg="RS256", aud=AUD)
    status, body = connect(proxy.server_address, METADATA, f"proxy-authorization: bearer {token}")
    assert body["code"] == "egress_refused", body
    proxy.proxy._audit.close()
    lines = [json.loads(x) for x in capfd.readouterr().err.splitlines() if x.startswith("{")]
    assert len(lines) == 2 and all(r["job"] == JOB and r["role"] == "worker" for r in lines)


# (case id, header lines the job sends, check named in the refusal)
HEADER_CASES = [
    ("no_svid", lambda ca: [], "authorization"),
    ("basic_scheme", lambda ca: ["Proxy-Authorization: Basic dXNlcjpwYXNz"], "authorization"),
    ("empty_bearer", lambda ca: ["Proxy-Authorization: Bearer "], "authorization"),
    ("two_headers", lambda ca: [bearer(svid(ca))] * 2, "authorization"),
    # Minted for the token exchange: not replayable at the proxy.
    ("token_audience", lambda ca: [bearer(svid(ca, "flashpods-token"))], "audience"),
    ("both_audiences", lambda ca: [bearer(svid(ca, AUD, "flashpods-token"))], "audience"),
    ("svid_in_authorization", lambda ca: [f"Authorization: Bearer {svid(ca)}"], "authorization"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("headers", "check"), [(h, c) for _, h, c in HEADER_CASES], ids=[i for i, _, _ in HEADER_CASES]
)
def test_a_missing_or_misplaced_svid_is_refused(proxy, ca, podman, headers, check):
    podman.add_job(JOB, "worker")
    status, body = connect(proxy.server_address, METADATA, *headers(ca))
    assert (status, body["code"]) == (403, "unauthenticated"), body
    message = body["error"]["message"]
    if check == "authorization":  # the refusal says what to send
        assert "Proxy-Authorization: Bearer" in message, body
    else:
        assert f"({check})" in message, body


# The token service's forged-SVID suite (its builders mint through ca.mint, given this
# audience below); its own audience cases are HEADER_CASES here.
PROXY_FORGERIES = [(i, b, c) for i, b, c in FORGERIES if c != "audience"]


@pytest.mark.parametrize(
    ("build", "check"),
    [(b, c) for _, b, c in PROXY_FORGERIES],
    ids=[i for i, _, _ in PROXY_FORGERIES],
)
def test_forged_svids_are_refused_naming_the_check(proxy, ca, podman, monkeypatch, build, check):
    podman.add_job(JOB, "worker")
    # Every builder that mints goes through ca.mint: give it this audience by default.
    mint = ca.mint
    monkeypatch.setattr(ca, "mint", lambda sub, **kw: mint(sub, **({"aud": [AUD]} | kw)))
    token = build(ca)
    status, body = connect(proxy.server_address, METADATA, bearer(token))
    assert (status, body["code"]) == (403, "unauthenticated"), body
    assert f"({check})" in body["error"]["message"], body


def test_the_svid_of_a_job_that_ended_is_refused(proxy, ca, podman):
    init = subprocess.Popen(["sleep", "60"])
    try:
        podman.add_job(JOB, "worker", pid=init.pid)
        token = ca.mint(ca.spiffe_id(JOB), aud=[AUD])
        assert connect(proxy.server_address, METADATA, bearer(token))[1]["code"] == "egress_refused"
    finally:
        init.kill()
        init.wait()
    status, body = connect(proxy.server_address, METADATA, bearer(token))
    assert (status, body["code"]) == (403, "unauthenticated")
    assert "(job_running)" in body["error"]["message"], body


def test_a_sub_agent_svid_for_a_worker_job_is_refused(proxy, ca, podman):
    podman.add_job(JOB, "worker")
    token = ca.mint(ca.spiffe_id(JOB, "sub_agent"), aud=[AUD])
    status, body = connect(proxy.server_address, METADATA, bearer(token))
    assert status == 403 and "(job_role)" in body["error"]["message"], body


def tls_request(path: str, cafile: Path, *headers: str) -> tuple[int, dict]:
    """The TLS-straight-away shape (curl --unix-socket): the SVID in the inner head."""
    with socket.socket(socket.AF_UNIX) as raw:
        raw.settimeout(10)
        raw.connect(path)
        ctx = ssl.create_default_context(cafile=str(cafile))
        with ctx.wrap_socket(raw, server_hostname="api.github.com") as tls:
            extra = "".join(f"{h}\r\n" for h in headers)
            tls.sendall(f"GET /user HTTP/1.1\r\nHost: api.github.com\r\n{extra}\r\n".encode())
            answer = b""
            while chunk := tls.recv(4096):
                answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body)


def test_tls_straight_away_carries_the_svid_in_the_request(proxy, ca, podman, tmp_path):
    podman.add_job(JOB, "worker")
    cafile = tmp_path / "ca.pem"
    cafile.write_bytes(proxy.proxy.ca.cert_pem)
    status, body = tls_request(proxy.server_address, cafile)
    assert (status, body["code"]) == (403, "unauthenticated"), body
    assert "Proxy-Authorization: Bearer" in body["error"]["message"]
    # With the SVID the job is known; api.github.com is pinned to loopback: egress refused.
    token = ca.mint(ca.spiffe_id(JOB), aud=[AUD])
    status, body = tls_request(proxy.server_address, cafile, bearer(token))
    assert (status, body["code"]) == (403, "egress_refused"), body


def test_the_ca_needs_no_svid(proxy):
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(proxy.server_address)
        s.sendall(b"GET /ca.pem HTTP/1.1\r\nHost: p\r\n\r\n")
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200") and b"BEGIN CERTIFICATE" in answer


def test_the_token_service_refuses_an_svid_minted_for_the_proxy(spire_server, ca, podman):
    podman.add_job(JOB, "worker")
    for aud in ([AUD], ["flashpods-token", AUD]):
        status, body, _ = exchange(spire_server.socket, token=ca.mint(ca.spiffe_id(JOB), aud=aud))
        assert status == 401 and body["check"] == "audience", (aud, body)


def test_the_token_audience_may_not_be_the_proxys(tmp_path, secret_files, podman):
    cfg = base_config(tmp_path, secret_files, podman, spire={"bundle_file": "/b", "audience": AUD})
    with pytest.raises(ConfigError, match="must not be 'flashpods-proxy'"):
        parse_config(cfg)


CLIENT = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(f"CONNECT {sys.argv[2]} HTTP/1.1\\r\\nHost: x\\r\\n{sys.argv[3]}\\r\\n\\r\\n".encode())
print(s.recv(4096).split(b"\\r\\n\\r\\n", 1)[1].decode())
"""


@pytest.mark.root
def test_an_svid_replayed_from_outside_its_jobs_container_is_refused(proxy, ca, podman):
    # The job's container: a PID namespace of its own, as a real container has.
    init = subprocess.Popen(["unshare", "--pid", "--fork", "sleep", "60"])
    try:
        for _ in range(50):
            child = Path(f"/proc/{init.pid}/task/{init.pid}/children").read_text().split()
            if child:
                break
            time.sleep(0.05)
        podman.add_job(JOB, "worker", pid=int(child[0]))
        header = bearer(svid(ca))
        # From inside the job's namespace (as podman exec would be): accepted.
        inside = subprocess.run(
            ["nsenter", "-t", child[0], "-p", "--", sys.executable, "-c", CLIENT,
             proxy.server_address, METADATA, header],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        assert json.loads(inside.stdout)["code"] == "egress_refused", inside
        # The same valid SVID from anywhere else (here: the host): refused.
        status, body = connect(proxy.server_address, METADATA, header)
        assert (status, body["code"]) == (403, "unauthenticated"), body
        assert "(peer_container)" in body["error"]["message"], body
    finally:
        init.kill()
        init.wait()
