"""The credential proxy in spire mode, with real SPIRE: the job is known only from its
JWT-SVID (audience flashpods-proxy, `Proxy-Authorization: Bearer`), fetched from the
real agent inside the job; flashpods-init's relay adds it to every connection
(test_proxy_relay.py runs the relay in both modes).

Attacks kept as tests: no SVID, a garbage token, the SVID minted for the token
exchange (and the proxy's SVID at the token service), another job's SVID replayed
from a job and from the host, the SVID of a job that has ended.
"""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest
from netlab import NetnsThread
from proxy_support import AGENT_IMAGE, MODEL_HOST

# A cold machine builds SPIRE first (scripts/lib/spire.sh): allow for it.
pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(3600)]

JOB_SCRIPT = Path(__file__).with_name("spire_job.sh").read_text()
SVID_OF = """
svid() {
    /flashpods/bin/spire-agent api fetch jwt -audience flashpods-proxy \\
        -socketPath /run/spire/sockets/agent.sock -timeout 5s |
        awk '/^token\\(/ { getline; gsub(/[ \\t]/, ""); print; exit }'
}
"""
HOLDER = (
    SVID_OF
    + """
echo "svid:$(svid)"
while [ ! -e /workspace/go ]; do sleep 0.2; done
"""
)
REPLAYER = """
r() { curl -sS --cacert "$FLASHPODS_PROXY_CA" --unix-socket /run/flashpods/proxy.sock \\
      -H "Proxy-Authorization: Bearer $STOLEN" \\
      -H "Authorization: token fpph.GITHUB_TOKEN.$VICTIM" \\
      "https://api.github.com/$1" -w "\\n$1:%{http_code}\\n"; }
r replay-running
echo waiting
while [ ! -e /workspace/go ]; do sleep 0.2; done
r replay-ended
"""


def test_a_job_in_spire_mode_gets_its_token_injected_and_refusals(proxy_host, origin):
    api, keys = proxy_host(attestation="spire")
    token = keys["GITHUB_TOKEN"]
    job = api.spawn(kind="worker", command=JOB_SCRIPT, image=AGENT_IMAGE, timeout_s=300)
    final = api.wait(job["id"], timeout=300)
    text = api.logs(job["id"]).decode(errors="replace")
    assert final["status"] == "succeeded", text[-3000:]
    lines = set(text.splitlines())

    # With its own SVID, directly and through the relay: the token arrives injected,
    # and the SVID never goes upstream.
    assert "direct:200" in lines and "relay:200" in lines, text
    for path in ("/direct", "/relay"):
        (seen,) = origin.seen(path)
        assert seen["headers"]["authorization"] == f"token {token}"
        assert "proxy-authorization" not in seen["headers"]

    # Refused, with a reason the job can read, and nothing reaches upstream.
    assert "nosvid:403" in lines and "no JWT-SVID" in text, text
    assert "garbage:403" in lines and "JWT-SVID refused (" in text
    assert "tokenaud:403" in lines and "(audience)" in text
    for path in ("/nosvid", "/garbage", "/tokenaud"):
        assert not origin.seen(path), path
    assert "exchange-with-proxy-svid:401" in lines, text
    assert '"check": "audience"' in text

    # The log: the injections under the job; the refusals (no job known) name the check.
    text = api.host.paths.service_log("proxy").read_text()
    records = [json.loads(x) for x in text.splitlines() if x.startswith("{")]
    mine = [r for r in records if r.get("job") == job["id"]]
    assert sum(r.get("injected") == ["GITHUB_TOKEN"] for r in mine) == 2, mine
    refused = {r.get("check") for r in records if r["outcome"] == "refused" and "job" not in r}
    assert refused >= {"authorization", "kid", "audience"}, records


def from_host(lab, path: Path, svid: str) -> bytes:
    """CONNECT from a host process (not a job) with the given SVID."""

    def call() -> bytes:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(path))
            s.sendall(
                f"CONNECT {MODEL_HOST}:443 HTTP/1.1\r\nHost: x\r\n"
                f"Proxy-Authorization: Bearer {svid}\r\n\r\n".encode()
            )
            return s.recv(4096)

    thread = NetnsThread(lab.path(lab.host))
    try:
        return thread.call(call)
    finally:
        thread.close()


def test_another_jobs_svid_is_refused_and_an_ended_jobs_too(proxy_host, origin, lab):
    api, _keys = proxy_host(attestation="spire")
    victim = api.spawn(kind="worker", command=HOLDER, image=AGENT_IMAGE, timeout_s=300)
    api.wait_for("the victim's SVID", lambda: b"svid:ey" in api.logs(victim["id"]), timeout=120)
    stolen = re.search(rb"svid:(\S+)", api.logs(victim["id"])).group(1).decode()

    # Replayed by another running job: the SVID is good, but not from that container.
    thief = api.spawn(
        kind="worker",
        command=f"STOLEN={stolen}; VICTIM={victim['id']}\n{REPLAYER}",
        image=AGENT_IMAGE,
        timeout_s=300,
    )
    api.wait_for("the first replay", lambda: b"waiting" in api.logs(thief["id"]), timeout=120)
    text = api.logs(thief["id"]).decode(errors="replace")
    assert "replay-running:403" in text and "(peer_container)" in text, text
    # ... and by a host process.
    head = from_host(lab, api.host.proxy_socket, stolen)
    assert head.startswith(b"HTTP/1.1 403") and b"(peer_container)" in head, head

    # The victim ends; its SVID is unexpired (5 min) but names a job that is over.
    (api.host.paths.workspaces / victim["id"] / "go").touch()
    assert api.wait(victim["id"])["status"] == "succeeded"
    (api.host.paths.workspaces / thief["id"] / "go").touch()
    api.wait(thief["id"])
    text = api.logs(thief["id"]).decode(errors="replace")
    assert "replay-ended:403" in text and "(job_running)" in text, text
    head = from_host(lab, api.host.proxy_socket, stolen)
    assert head.startswith(b"HTTP/1.1 403") and b"(job_running)" in head, head
    assert not origin.seen("/replay-running") and not origin.seen("/replay-ended")
