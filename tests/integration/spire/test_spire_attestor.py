"""Real SPIRE attests a real job through the flashpods workload attestor plugin.

The dev host in spire mode (flashpods_devhost.spire): spire-server and spire-agent
v1.13.3 (scripts/lib/spire.sh) on loopback with join-token node attestation; the agent
loads the plugin as an external plugin pointed at the dev host's Podman socket. A job
started by the real API in a real rootless Podman container fetches a JWT-SVID from the
agent with the static spire-agent the API mounted (busybox worker image) and gets the
SPIFFE ID of the entry the API's registrar created (selectors flashpods:job:<id>,
flashpods:kind:worker, flashpods:instance:<name>). Processes outside that job's
container get nothing.
"""

from __future__ import annotations

import base64
import json
import re
import signal
from pathlib import Path

import pytest
from flashpods_devhost.configs import TRUST_DOMAIN
from flashpods_devhost.spire import AUDIENCE
from flashpods_token.identity import identity_for_kind
from flashpods_token.verify_spire import BundleFile, SpireVerifier
from flashpods_token.workload_bundle import WorkloadApiBundle
from token_support import (
    AGENT_CLI_IN_JOB,
    AGENT_SOCKET_IN_JOB,
    FINAL,
    WORKER_IMAGE,
    Api,
    fetch_svid_in,
    svid_in,
    wait_container_running,
    wait_for,
)

# On a machine without the SPIRE cache the first test builds SPIRE (scripts/lib/spire.sh,
# tens of minutes cold): allow for it; a warm run takes seconds.
pytestmark = [pytest.mark.slow, pytest.mark.root, pytest.mark.timeout(3600)]

# The job waits for the test, then asks for its SVID (a new entry reaches the agent on
# its next sync: retry for a bounded time).
FETCH = (
    "while [ ! -e /workspace/go ]; do sleep 0.1; done; "
    "i=0; while [ $i -lt 40 ]; do "
    f"{AGENT_CLI_IN_JOB} api fetch jwt -audience {AUDIENCE} "
    f"-socketPath {AGENT_SOCKET_IN_JOB} -timeout 5s && exit 0; "
    "i=$((i+1)); sleep 0.5; done; exit 1"
)
HOLD = "while [ ! -e /workspace/go ]; do sleep 0.1; done; sleep 600"


@pytest.fixture
def host(devhost_factory):
    return devhost_factory(attestation="spire")


def spiffe_id(job_id: str) -> str:
    return identity_for_kind(TRUST_DOMAIN, job_id, "worker").spiffe_id


def test_agent_without_cap_sys_ptrace_refuses_to_start(host):
    spire = host.spire
    host.kill("spire-agent")
    log = host.paths.root / "spire-agent-nocap.log"
    agent = spire.agent_service(log, host.paths.root, caps=())
    spire.before_agent_start()
    agent.start()
    try:
        status = agent.process.wait(timeout=60)
        text = log.read_text()
        assert status != 0 and "needs CAP_SYS_PTRACE" in text, text[-3000:]
    finally:
        agent.stop()


def claims(jwt: str) -> dict:
    payload = jwt.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def refused(out) -> bool:
    return (
        out.returncode != 0
        and "token(" not in out.stdout
        and "no identity issued" in out.stderr + out.stdout
    )


def test_job_gets_its_svid_and_nothing_else_does(host):
    spire = host.spire
    api = Api(host)
    workspaces = Path(host.api_config["storage"]["workspaces"])
    job_id = api.create({"kind": "worker", "command": FETCH})
    other_id = api.create({"kind": "worker", "command": HOLD})
    for jid in (job_id, other_id):
        wait_container_running(host, jid)
    # An entry for the other job that names the wrong instance: it must never match.
    elsewhere = f"spiffe://{TRUST_DOMAIN}/elsewhere/{other_id}"
    spire.register(
        elsewhere,
        [f"flashpods:job:{other_id}", "flashpods:kind:worker", "flashpods:instance:elsewhere"],
    )
    (workspaces / job_id / "go").touch()

    job = api.wait(job_id, FINAL, timeout_s=120)
    log = api.log(job_id)
    assert job["status"] == "succeeded", (job, log, host.log("spire-agent"))
    m = re.search(r"token\((spiffe://[^)]*)\):\s+(\S+)", log)
    assert m and m.group(1) == spiffe_id(job_id), log
    c = claims(m.group(2))
    assert c["sub"] == spiffe_id(job_id) and AUDIENCE in (
        c["aud"] if isinstance(c["aud"], list) else [c["aud"]]
    )
    # The token service's verifier accepts it against the real server's bundle file.
    verifier = SpireVerifier(
        BundleFile(str(spire.write_bundle_file())), TRUST_DOMAIN, AUDIENCE, 0, None
    )
    svid = verifier.verify_token(m.group(2))
    assert (svid.identity.job_id, svid.identity.role) == (job_id, "worker")
    # ... and against the bundle the real agent streams (FetchJWTBundles).
    streamed = WorkloadApiBundle(str(spire.paths.agent_socket), TRUST_DOMAIN)
    try:
        verifier = SpireVerifier(streamed, TRUST_DOMAIN, AUDIENCE, 0, None)
        assert verifier.verify_token(m.group(2)).identity == svid.identity
    finally:
        streamed.close()

    # The other job (same instance, running, its own container) gets its own identity
    # only: not the wrong-instance entry's, not job_id's.
    assert svid_in(host, other_id)
    assert refused(fetch_svid_in(host, other_id, "-spiffeID", elsewhere))
    assert refused(fetch_svid_in(host, other_id, "-spiffeID", spiffe_id(job_id)))

    # Host processes: root, and the uid the containers run as, get nothing.
    for user in (None, "flashpods"):
        assert refused(spire.fetch_jwt(runuser=user)), user

    # The finished job's container is gone (the API removed it). A container re-created
    # by hand with its name and labels is not that job: the plugin saw the job's first
    # container and never lets another speak for it. The registrar deleted the job's
    # entry; give SPIRE one back (as a registrar that lagged behind would leave it),
    # with a marker entry for the other job registered after it: once the other job
    # gets the marker's SVID, the agent holds the finished job's entry too.
    wait_for("the registrar did not delete the finished job's entry",
             lambda: job_id not in spire.server_cli(
                 "entry", "show", "-selector", f"flashpods:job:{job_id}").stdout, 30)  # fmt: skip
    spire.register(
        spiffe_id(job_id),
        [f"flashpods:job:{job_id}", "flashpods:kind:worker",
         f"flashpods:instance:{host.settings.instance}"],
    )  # fmt: skip
    marker = f"spiffe://{TRUST_DOMAIN}/marker/{other_id}"
    spire.register(
        marker,
        [f"flashpods:job:{other_id}", "flashpods:kind:worker",
         f"flashpods:instance:{host.settings.instance}"],
    )  # fmt: skip
    wait_for(
        "the agent never got the marker entry",
        lambda: fetch_svid_in(host, other_id, "-spiffeID", marker).returncode == 0,
        60,
    )
    # The reaper would remove the impostor (a final job's container): pause it, so the
    # plugin's own refusal is what is tested.
    host.kill("reaper", signal.SIGSTOP)
    try:
        labels = {"instance": host.settings.instance, "job": job_id, "kind": "worker"}
        run = host.podman(
            "run", "-d", "--name", job_id, "--network", "none",
            *[a for k, v in labels.items() for a in ("--label", f"flashpods.{k}={v}")],
            "-v", f"{spire.paths.agent_socket}:{AGENT_SOCKET_IN_JOB}",
            "-v", f"{spire.bins.agent}:{AGENT_CLI_IN_JOB}:ro",
            WORKER_IMAGE, "sleep", "600",
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        assert refused(fetch_svid_in(host, job_id))
    finally:
        host.podman("rm", "-f", "-t", "0", job_id)
        host.kill("reaper", signal.SIGCONT)
    (workspaces / other_id / "go").touch()
