"""Spire mode end to end on a dev host, with real SPIRE: the API's registrar creates
the job's entry on the real spire-server, the API mounts the real agent's socket and the
static spire-agent CLI into the job, flashpods-init fetches a real JWT-SVID (attested
by the flashpods plugin), and the token service in spire mode verifies it against the
bundle the real agent streams and hands out the role's secrets."""

from __future__ import annotations

import hashlib
import json
import secrets
from pathlib import Path

import pytest
from flashpods_devhost.accounts import Accounts
from flashpods_devhost.layout import Paths
from flashpods_devhost.pytest_plugin import TEST_BASE
from spire_support import AGENT_ID, TRUST_DOMAIN, Spire, install, wait_for
from token_support import FINAL, Api, unique_secrets, wait_container_running

# A cold machine builds SPIRE in the first test (scripts/lib/spire.sh): allow for it.
pytestmark = [pytest.mark.slow, pytest.mark.root, pytest.mark.timeout(3600)]

SECRETS = unique_secrets()
ROLES = {"worker": ["GITHUB_TOKEN"], "sub_agent": ["ANTHROPIC_API_KEY", "GITHUB_TOKEN"]}


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


@pytest.fixture
def spire_host(devhost_factory):
    bins = install()
    unique = secrets.token_hex(4)
    root, instance = TEST_BASE / unique, f"t-{unique}"
    accounts = Accounts.resolve()
    spire = Spire(
        bins, Path("/var/tmp") / f"flashpods-spire-{unique}", str(Paths(root).podman_socket),
        instance, agent_account=accounts.token, agent_caps=("sys_ptrace",),
        server_account=accounts.api,
    )  # fmt: skip
    try:
        host = devhost_factory(
            root=root,
            instance=instance,
            secrets=dict(SECRETS),
            roles={r: list(n) for r, n in ROLES.items()},
            api_overrides={
                "attestation": "spire",
                "spire": {
                    "server_cli": str(bins["spire_server"]),
                    "server_socket": str(spire.server_socket),
                    "trust_domain": TRUST_DOMAIN,
                    "parent_id": AGENT_ID,
                    "agent_socket": str(spire.agent_socket),
                    "agent_cli": str(bins["spire_agent"]),
                },
            },
            token_overrides={
                "mode": "spire",
                "spire": {"agent_socket": str(spire.agent_socket), "bundle_file": None},
            },
        )
        yield host, spire
    finally:
        spire.stop()


def test_job_gets_its_secrets_through_real_spire(spire_host):
    host, spire = spire_host
    api = Api(host)
    job_id = api.create(
        {"kind": "worker", "command": 'printf %s "$GITHUB_TOKEN" | sha256sum; echo done'}
    )
    job = api.wait(job_id, FINAL, timeout_s=180)
    log = api.log(job_id)
    assert job["status"] == "succeeded", (job, log, spire.agent_log.read_text()[-3000:])
    assert sha(SECRETS["GITHUB_TOKEN"]) in log and "done" in log
    # The token service granted it to the SVID's SPIFFE ID (spire mode: no peer facts).
    audit = [
        json.loads(line) for line in Path(host.token_config["audit_log"]).read_text().splitlines()
    ]
    [line] = [a for a in audit if a.get("job") == job_id]
    assert line["outcome"] == "granted"
    assert line["spiffe_id"] == f"spiffe://{TRUST_DOMAIN}/job/{job_id}/worker"
    assert host.token_config["mode"] == "spire"

    # The registrar deletes the finished job's entry (right after the final state).
    def entry_gone() -> bool:
        shown = spire.server_cli("entry", "show", "-selector", f"flashpods:job:{job_id}")
        return f"/job/{job_id}/" not in shown.stdout

    wait_for("the finished job's entry was not deleted", entry_gone, 30,
             logs=[host.paths.service_log("api"), host.paths.service_log("reaper")])  # fmt: skip


def fetch_in(host, job_id: str, *extra: str):
    return host.podman(
        "exec", job_id, "/flashpods/bin/spire-agent", "api", "fetch", "jwt",
        "-audience", "flashpods-token", "-socketPath", "/run/spire/sockets/agent.sock",
        "-timeout", "5s", *extra,
    )  # fmt: skip


def test_a_job_cannot_get_another_jobs_svid(spire_host):
    host, spire = spire_host
    api = Api(host)
    workspaces = Path(host.api_config["storage"]["workspaces"])
    hold = "while [ ! -e /workspace/go ]; do sleep 0.1; done"
    victim = api.create({"kind": "worker", "command": hold})
    thief = api.create({"kind": "worker", "command": hold})
    for jid in (victim, thief):
        wait_container_running(host, jid)
    victim_id = f"spiffe://{TRUST_DOMAIN}/job/{victim}/worker"
    thief_id = f"spiffe://{TRUST_DOMAIN}/job/{thief}/worker"

    # The thief is attested, as itself (once its new entry reached the agent).
    wait_for("the thief's entry never reached the agent",
             lambda: fetch_in(host, thief).returncode == 0, 60, logs=[spire.agent_log])  # fmt: skip
    own = fetch_in(host, thief)
    assert own.returncode == 0 and f"token({thief_id})" in own.stdout, own.stderr
    assert victim_id not in own.stdout
    stolen = fetch_in(host, thief, "-spiffeID", victim_id)
    assert stolen.returncode != 0 and "token(" not in stolen.stdout, stolen.stdout
    assert "no identity issued" in stolen.stderr + stolen.stdout, stolen.stderr

    for jid in (victim, thief):
        (workspaces / jid / "go").touch()
    for jid in (victim, thief):
        assert api.wait(jid, FINAL, timeout_s=120)["status"] == "succeeded"
