"""flashpods-init's relay: curl and git that know only HTTPS_PROXY get the token
injected at the host, trusting the host's proxy CA that the helper wrote into /tmp;
in peer and in spire mode."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from proxy_support import AGENT_IMAGE

pytestmark = [pytest.mark.root, pytest.mark.slow]

JOB_SCRIPT = Path(__file__).with_name("relay_job.sh").read_text()


# Spire mode: the relay puts the job's JWT-SVID (audience flashpods-proxy, from the real
# agent) on every connection; a cold machine builds SPIRE first, hence the timeout.
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("attestation", ["peer", "spire"])
def test_curl_and_git_through_the_relay(proxy_host, origin, attestation):
    api, keys = proxy_host(attestation=attestation)
    token = keys["GITHUB_TOKEN"]
    job = api.spawn(kind="worker", command=JOB_SCRIPT, image=AGENT_IMAGE, timeout_s=300)
    final = api.wait(job["id"], timeout=300)
    text = api.logs(job["id"]).decode(errors="replace")
    assert final["status"] == "succeeded", text[-3000:]
    lines = set(text.splitlines())
    assert {"GIT_SSL_CAINFO", "HTTPS_PROXY", "NODE_EXTRA_CA_CERTS", "SSL_CERT_FILE"} <= lines

    assert "relay-curl:200" in lines, text
    (relay,) = origin.seen("/relay")
    assert relay["headers"]["authorization"] == f"token {token}"
    assert "proxy-authorization" not in relay["headers"]  # spire: the SVID stays here

    # git answers GitHub's 401 challenge with its URL credentials: injected on the way.
    refs = [r for r in origin.seen("/o/r.git/info/refs") if "authorization" in r["headers"]]
    assert refs, (origin.requests, text)
    basic = refs[-1]["headers"]["authorization"].split(" ", 1)[1]
    assert base64.b64decode(basic).decode() == f"x-access-token:{token}"

    # No rule for the bare address: tunnelled, the placeholder arrives as the job sent it.
    assert "tunnel:200" in lines
    (tunnel,) = origin.seen("/tunnel")
    assert tunnel["headers"]["authorization"] == f"token fpph.GITHUB_TOKEN.{job['id']}"


RESTART_SCRIPT = r"""
c() { curl -sS -H "Authorization: token $GITHUB_TOKEN" "https://api.github.com/$1" -o /dev/null \
      -w "$1:%{http_code}\n"; }
c before
while [ ! -e /workspace/go ]; do sleep 0.2; done
c after
"""


def test_a_proxy_restart_keeps_running_jobs_served(proxy_host, origin):
    # The socket is renamed into the directory containers mount, the CA is kept in
    # ca_dir, and the relay dials the socket per connection: a restart is invisible.
    api, keys = proxy_host()
    job = api.spawn(kind="worker", command=RESTART_SCRIPT, image=AGENT_IMAGE, timeout_s=300)
    api.wait_for("the first call", lambda: b"before:" in api.logs(job["id"]))
    api.host.kill("proxy")
    api.host.start("proxy")
    (api.host.paths.workspaces / job["id"] / "go").touch()
    final = api.wait(job["id"])
    text = api.logs(job["id"]).decode(errors="replace")
    assert final["status"] == "succeeded" and "before:200" in text and "after:200" in text, text
    (after,) = origin.seen("/after")
    assert after["headers"]["authorization"] == f"token {keys['GITHUB_TOKEN']}"
