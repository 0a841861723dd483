"""The relay in spire mode: every connection it relays to the credential proxy carries
the job's JWT-SVID for audience flashpods-proxy in `Proxy-Authorization: Bearer`, right
after the request line; the SVID is fetched once and kept until shortly before its
`exp`; without one the client gets a clear error. In peer mode nothing is added.

The helper runs on the host in a private mount and PID namespace (its own /tmp for
the CA files; the relay daemon ends with the command), against a stand-in proxy and
the stand-in `spire-agent` CLI of the other spire tests. tests/integration/proxy/
tests/integration/proxy/test_proxy_spire_jobs.py has the real agent and proxy.
"""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import threading
import time
from pathlib import Path

from helper_standin import agent_calls, grant, pretty_jwt_output, write_agent_script
from helper_support import base_env

SPIFFE_ID = "spiffe://flashpods.internal/job/j1/worker"
PEM = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"

# The job: CONNECT through $HTTPS_PROXY once per argument, sleeping that many seconds
# first; prints each answer's status line and, for an error, its JSON body.
CLIENT = r"""
import os, socket, sys, time
host, port = os.environ["HTTPS_PROXY"].removeprefix("http://").split(":")
for pause in sys.argv[1:]:
    time.sleep(float(pause))
    s = socket.create_connection((host, int(port)))
    s.sendall(b"CONNECT api.github.com:443 HTTP/1.1\r\nHost: api.github.com:443\r\n\r\n")
    answer = b""
    while chunk := s.recv(4096):
        answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    print(head.split(b"\r\n")[0].decode(), body.decode().strip())
"""


def jwt(exp: int) -> str:
    def part(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    claims = {"aud": ["flashpods-proxy"], "exp": exp, "sub": SPIFFE_ID}
    return f"{part({'alg': 'ES256', 'kid': 'k'})}.{part(claims)}.c2lnbmF0dXJl"


class StandinProxy:
    """Hands out a CA on GET /ca.pem; records every other head and answers 200."""

    def __init__(self, path: Path):
        self.path = path
        self.heads: list[bytes] = []
        self._sock = socket.socket(socket.AF_UNIX)
        self._sock.bind(str(path))
        self._sock.listen(16)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                head = b""
                while b"\r\n\r\n" not in head and (chunk := conn.recv(4096)):
                    head += chunk
                if head.startswith(b"GET /ca.pem "):
                    conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + PEM)
                else:
                    self.heads.append(head)
                    conn.sendall(b"HTTP/1.1 200 Connection Established\r\n\r\n")

    def close(self) -> None:
        self._sock.close()


def run_job(helper: Path, workdir: Path, env: dict[str, str], *pauses: str):
    """The helper with CLIENT as its command, in its own mount and PID namespace."""
    wrapper = 'mount -t tmpfs fp-tmp /tmp && exec "$0" "$@"'
    argv = ["unshare", "--mount", "--propagation", "private", "--pid", "--fork",
            "sh", "-c", wrapper, str(helper), "--", "python3", "-c", CLIENT, *pauses]  # fmt: skip
    env = env | {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)


def setup(workdir: Path, token_server, token: str, **agent: object):
    tokens = token_server(grant({}))
    proxy = StandinProxy(workdir / "proxy.sock")
    script = write_agent_script(
        workdir / "spire-agent", output=pretty_jwt_output(SPIFFE_ID, token), **agent
    )
    env = base_env(
        workdir,
        FLASHPODS_TOKEN_SOCKET=str(tokens.path),
        FLASHPODS_PROXY_SOCKET=str(proxy.path),
        FLASHPODS_ATTESTATION="spire",
        FLASHPODS_SPIRE_AGENT=str(script),
        SPIFFE_ENDPOINT_SOCKET="unix:///run/spire/sockets/agent.sock",
    )
    return proxy, script, env


def proxy_fetches(script: Path) -> list[str]:
    return [c for c in agent_calls(script) if "-audience flashpods-proxy" in c]


def test_every_relayed_connection_carries_the_cached_svid(helper, workdir, token_server):
    token = jwt(int(time.time()) + 3600)
    proxy, script, env = setup(workdir, token_server, token)
    try:
        result = run_job(helper, workdir, env, "0", "0", "0.2")
    finally:
        proxy.close()
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("HTTP/1.1 200 Connection Established") == 3, result.stdout
    assert len(proxy.heads) == 3
    for head in proxy.heads:
        lines = head.decode().split("\r\n")
        # Right after the request line, before the client's own headers.
        assert lines[:3] == [
            "CONNECT api.github.com:443 HTTP/1.1",
            f"Proxy-Authorization: Bearer {token}",
            "Host: api.github.com:443",
        ], lines
    # One fetch for all three: the SVID is cached (a fresh one per job, not per request).
    assert proxy_fetches(script) == [
        "api fetch jwt -audience flashpods-proxy -socketPath /run/spire/sockets/agent.sock"
    ]
    assert token not in result.stderr and token not in result.stdout


def test_an_svid_close_to_its_expiry_is_fetched_again(helper, workdir, token_server):
    # exp in 4 s: replaced with half of its life left (the margin is at most 30 s).
    proxy, script, env = setup(workdir, token_server, jwt(int(time.time()) + 4))
    try:
        result = run_job(helper, workdir, env, "0", "3")
    finally:
        proxy.close()
    assert result.returncode == 0, result.stderr
    assert len(proxy.heads) == 2
    assert len(proxy_fetches(script)) == 2, agent_calls(script)


def test_no_svid_is_a_clear_error_for_the_client(helper, workdir, token_server):
    proxy, script, env = setup(workdir, token_server, jwt(0), always_fail=True)
    # The exchange needs an SVID too: let the command run without secrets.
    env |= {"FLASHPODS_SECRETS": "optional", "FLASHPODS_SVID_WAIT_S": "1"}
    try:
        result = run_job(helper, workdir, env, "0")
    finally:
        proxy.close()
    assert result.returncode == 0, result.stderr
    status, _, body = result.stdout.strip().partition(" {")
    assert status.startswith("HTTP/1.1 502"), result.stdout
    record = json.loads("{" + body)
    assert record["code"] == "no_svid"
    assert "no JWT-SVID for the credential proxy" in record["error"]["message"]
    assert "flashpods-proxy" in record["error"]["message"]  # the audience it asked for
    assert not proxy.heads  # nothing reached the proxy


def test_peer_mode_adds_nothing(helper, workdir, token_server):
    proxy, script, env = setup(workdir, token_server, jwt(int(time.time()) + 3600))
    env["FLASHPODS_ATTESTATION"] = "peer"
    try:
        result = run_job(helper, workdir, env, "0")
    finally:
        proxy.close()
    assert result.returncode == 0, result.stderr
    (head,) = proxy.heads
    assert head == b"CONNECT api.github.com:443 HTTP/1.1\r\nHost: api.github.com:443\r\n\r\n"
    assert agent_calls(script) == []
