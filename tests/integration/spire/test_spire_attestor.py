"""Real SPIRE attests a real job through the flashpods workload attestor plugin.

spire-server and spire-agent v1.13.3 (scripts/lib/spire.sh) run on loopback with
join-token node attestation; the agent loads the plugin as an external plugin pointed
at the dev host's Podman socket. A job started by the real API in a real rootless
Podman container fetches a JWT-SVID from the agent with the static spire-agent binary
(busybox worker image) and gets the SPIFFE ID of the entry whose selectors are
flashpods:job:<id>, flashpods:kind:worker, flashpods:instance:<name>. Processes outside
that job's container get nothing.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
from pathlib import Path

import pytest
from flashpods_api.registrar import SpireRegistrar
from flashpods_token.verify_spire import BundleFile, SpireVerifier
from flashpods_token.workload_bundle import WorkloadApiBundle
from spire_support import AGENT_ID, AUDIENCE, TRUST_DOMAIN, Spire, install, place_agent
from token_support import FINAL, WORKER_IMAGE, Api, wait_container_running

# On a machine without the SPIRE cache the first test builds SPIRE (scripts/lib/spire.sh,
# tens of minutes cold): allow for it; a warm run takes seconds.
pytestmark = [pytest.mark.slow, pytest.mark.root, pytest.mark.timeout(3600)]

# The job waits for the test to hand it the agent, then asks for its SVID (a new entry
# reaches the agent on its next sync: retry for a bounded time).
FETCH = (
    "while [ ! -e /workspace/go ]; do sleep 0.1; done; "
    "i=0; while [ $i -lt 40 ]; do "
    f"/workspace/spire-agent api fetch jwt -audience {AUDIENCE} "
    "-socketPath /workspace/agent.sock -timeout 5s && exit 0; "
    "i=$((i+1)); sleep 0.5; done; exit 1"
)
HOLD = "while [ ! -e /workspace/go ]; do sleep 0.1; done; sleep 600"


@pytest.fixture(scope="module")
def bins() -> dict[str, Path]:
    return install()


@pytest.fixture
def host(devhost_factory):
    return devhost_factory()


def start_spire(bins, host, caps: tuple[str, ...], wait: bool = True) -> Spire:
    """The agent runs as a non-root service account of the dev host that may use the
    Podman socket (the token service's; there is no spire-agent account on the dev
    host), with exactly the capabilities given."""
    root = host.paths.root / f"spire-{secrets.token_hex(3)}"
    return Spire(bins, root, str(host.paths.podman_socket), host.settings.instance,
                 agent_account=host.accounts.token, agent_caps=caps,
                 wait_for_agent=wait)  # fmt: skip


@pytest.fixture
def spire(bins, host):
    s = start_spire(bins, host, ("sys_ptrace",))
    yield s
    s.stop()


def test_agent_without_cap_sys_ptrace_refuses_to_start(bins, host):
    s = start_spire(bins, host, (), wait=False)
    try:
        s.agent_proc.wait(timeout=60)
        log = s.agent_log.read_text()
        assert s.agent_proc.returncode != 0 and "needs CAP_SYS_PTRACE" in log, log[-3000:]
    finally:
        s.stop()


def claims(jwt: str) -> dict:
    payload = jwt.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def test_job_gets_its_svid_and_nothing_else_does(host, spire):
    api = Api(host)
    workspaces = Path(host.api_config["storage"]["workspaces"])
    job_id = api.create({"kind": "worker", "command": FETCH})
    other_id = api.create({"kind": "worker", "command": HOLD})
    for jid in (job_id, other_id):
        wait_container_running(host, jid)
        place_agent(workspaces / jid, spire)
    spiffe_id = f"spiffe://{TRUST_DOMAIN}/job/{job_id}/worker"
    # The API's registrar, against the real server, as in spire mode.
    SpireRegistrar(
        server_cli=str(spire.bins["spire_server"]),
        server_socket=str(spire.server_socket),
        trust_domain=TRUST_DOMAIN,
        parent_id=AGENT_ID,
        instance=host.settings.instance,
    ).register(job_id, "worker")
    # The other job's entry names the wrong instance: it must never match.
    spire.register(
        f"spiffe://{TRUST_DOMAIN}/job/{other_id}/worker",
        [f"flashpods:job:{other_id}", "flashpods:kind:worker", "flashpods:instance:elsewhere"],
    )
    (workspaces / job_id / "go").touch()
    (workspaces / other_id / "go").touch()

    job = api.wait(job_id, FINAL, timeout_s=120)
    log = api.log(job_id)
    assert job["status"] == "succeeded", (job, log, spire.agent_log.read_text()[-3000:])
    m = re.search(r"token\((spiffe://[^)]*)\):\s+(\S+)", log)
    assert m and m.group(1) == spiffe_id, log
    c = claims(m.group(2))
    assert c["sub"] == spiffe_id and AUDIENCE in (
        c["aud"] if isinstance(c["aud"], list) else [c["aud"]]
    )
    # The token service's verifier accepts it against the real server's bundle file.
    bundle = spire.root / "bundle.spiffe.json"
    bundle.write_text(spire.server_cli("bundle", "show", "-format", "spiffe").stdout)
    verifier = SpireVerifier(BundleFile(str(bundle)), TRUST_DOMAIN, AUDIENCE, 0, None)
    svid = verifier.verify_token(m.group(2))
    assert (svid.identity.job_id, svid.identity.role) == (job_id, "worker")
    # ... and against the bundle the real agent streams (FetchJWTBundles).
    streamed = WorkloadApiBundle(str(spire.agent_socket), TRUST_DOMAIN)
    try:
        verifier = SpireVerifier(streamed, TRUST_DOMAIN, AUDIENCE, 0, None)
        assert verifier.verify_token(m.group(2)).identity == svid.identity
    finally:
        streamed.close()

    # The other job (same instance, running, its own container) gets nothing: its
    # entry's selectors do not all match, and job_id's entry is not its.
    out = host.podman(
        "exec", other_id, "/workspace/spire-agent", "api", "fetch", "jwt", "-audience", AUDIENCE,
        "-socketPath", "/workspace/agent.sock", "-timeout", "5s",
    )  # fmt: skip
    assert out.returncode != 0 and "token(" not in out.stdout, out.stdout
    assert "no identity issued" in out.stderr + out.stdout, out.stderr

    # Host processes: root, and the uid the containers run as, get nothing (the
    # private directory is root's: the other uid uses a link in a traversable one).
    kit = host.paths.root / f"kit-{secrets.token_hex(3)}"
    kit.mkdir(mode=0o755)
    place_agent(kit, spire)
    for user in (None, "flashpods"):
        out = spire.fetch_jwt(kit / "agent.sock", runuser=user)
        assert out.returncode != 0 and "token(" not in out.stdout, (user, out.stdout)
        assert "no identity issued" in out.stderr + out.stdout, (user, out.stderr)

    # The finished job's container is gone (the API removed it). A container re-created
    # by hand with its name and labels is not that job: the plugin saw the job's first
    # container and never lets another speak for it, though SPIRE still has the entry.
    # The reaper would remove the impostor (a final job's container): stop it, so the
    # plugin's own refusal is what is tested.
    host.kill("reaper")
    labels = {"instance": host.settings.instance, "job": job_id, "kind": "worker"}
    run = host.podman(
        "run", "-d", "--name", job_id, "--network", "none",
        *[a for k, v in labels.items() for a in ("--label", f"flashpods.{k}={v}")],
        "-v", f"{kit}:/kit", WORKER_IMAGE, "sleep", "600",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    out = host.podman(
        "exec", job_id, "/kit/spire-agent", "api", "fetch", "jwt", "-audience", AUDIENCE,
        "-socketPath", "/kit/agent.sock", "-timeout", "5s",
    )  # fmt: skip
    assert out.returncode != 0 and "token(" not in out.stdout, out.stdout
    assert "no identity issued" in out.stderr + out.stdout, out.stderr
