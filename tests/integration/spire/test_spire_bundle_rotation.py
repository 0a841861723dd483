"""The token service follows a real JWT key rotation through the agent's FetchJWTBundles
stream (spire mode, bundle from the Workload API): after `spire-server localauthority
jwt prepare/activate`, SVIDs signed with the new key are accepted; after the old
authority is tainted and revoked, an SVID signed with the old key is refused (`kid`).
(This replaced the stand-in Workload API the unit tests used to stream bundles.)"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import time

import pytest
from token_support import SVID_RE, Api, fetch_svid_in, svid_in, wait_container_running

pytestmark = [pytest.mark.slow, pytest.mark.root, pytest.mark.timeout(3600)]


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: str):
        super().__init__("token", timeout=10)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(self.path)


def exchange(host, svid: str) -> tuple[int, dict]:
    """One exchange with `svid` as the bearer (the token service checks the SVID and
    that its job runs, not who presents it)."""
    conn = UnixHTTP(str(host.token_socket))
    conn.request("POST", "/v1/exchange", body=b"",
                 headers={"Content-Length": "0", "Authorization": f"Bearer {svid}"})  # fmt: skip
    reply = conn.getresponse()
    status, body = reply.status, json.loads(reply.read())
    conn.close()
    return status, body


def kid(jwt: str) -> str:
    head = jwt.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))["kid"]


def authorities(spire) -> dict:
    out = spire.server_cli("localauthority", "jwt", "show", "-output", "json")
    return json.loads(out.stdout)


def until(what: str, check, timeout_s: float = 60):
    deadline = time.monotonic() + timeout_s
    while not (value := check()):
        assert time.monotonic() < deadline, what
        time.sleep(0.3)
    return value


def test_token_service_follows_a_real_jwt_key_rotation(devhost_factory):
    host = devhost_factory(attestation="spire")
    assert host.token_config["spire"]["agent_socket"]  # the streamed bundle, not a file
    spire, api = host.spire, Api(host)
    job_id = api.create({"kind": "worker", "command": "sleep 600"})
    wait_container_running(host, job_id)
    old = svid_in(host, job_id)
    assert exchange(host, old)[0] == 200

    old_authority = authorities(spire)["active"]["authority_id"]
    assert kid(old) == old_authority
    prepared = json.loads(
        spire.server_cli("localauthority", "jwt", "prepare", "-output", "json").stdout
    )["prepared_authority"]["authority_id"]
    spire.server_cli("localauthority", "jwt", "activate", "-authorityID", prepared)

    # A new SVID (another audience set: the agent caches SVIDs per audience) carries
    # the new key, and the token service learns it from the stream.
    def new_svid() -> str | None:
        out = fetch_svid_in(host, job_id, "-audience", "flashpods-token,rotation")
        found = SVID_RE.search(out.stdout)
        return found.group(2) if found and kid(found.group(2)) == prepared else None

    new = until("no SVID signed with the new key", new_svid)
    until(
        "the new key never reached the token service",
        lambda: exchange(host, new)[0] == 200,
    )

    # The old authority is tainted, then revoked: its key leaves the bundle, and an
    # SVID it signed (unexpired) is refused.
    spire.server_cli("localauthority", "jwt", "taint", "-authorityID", old_authority)
    spire.server_cli("localauthority", "jwt", "revoke", "-authorityID", old_authority)
    status, body = until(
        "the revoked key was never dropped",
        lambda: (answer := exchange(host, old))[0] == 401 and answer,
    )
    assert body["check"] == "kid", body
    assert exchange(host, new)[0] == 200
    api.s.post(f"{api.url}/jobs/{job_id}/kill", timeout=30)
