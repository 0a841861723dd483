"""Spire mode end to end on a dev host with real SPIRE (`DevHost(attestation="spire")`,
what `scripts/dev-host --attestation spire` runs): the API's registrar creates the
job's entry on the real spire-server, the API mounts the real agent's socket and the
static spire-agent CLI into the job, flashpods-init fetches a real JWT-SVID (attested
by the flashpods plugin), and the token service in spire mode verifies it against the
bundle the real agent streams, or the server's bundle file, and hands out the role's
secrets."""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import stat
from pathlib import Path

import pytest
from flashpods_devhost.configs import TRUST_DOMAIN
from flashpods_token.identity import identity_for_kind
from token_support import (
    FINAL,
    Api,
    svid_in,
    unique_secrets,
    wait_container_running,
    wait_for,
)

# A cold machine builds SPIRE in the first test (scripts/lib/spire.sh): allow for it.
pytestmark = [pytest.mark.slow, pytest.mark.root, pytest.mark.timeout(3600)]

SECRETS = unique_secrets()
ROLES = {"worker": ["GITHUB_TOKEN"], "sub_agent": ["ANTHROPIC_API_KEY", "GITHUB_TOKEN"]}


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def spiffe_id(job_id: str, kind: str = "worker") -> str:
    return identity_for_kind(TRUST_DOMAIN, job_id, kind).spiffe_id


@pytest.fixture(params=["workload_api", "file"])
def spire_host(request, devhost_factory):
    return devhost_factory(
        attestation="spire",
        spire_bundle=request.param,
        secrets=dict(SECRETS),
        roles={r: list(n) for r, n in ROLES.items()},
    )


def test_job_gets_its_secrets_through_real_spire(spire_host):
    host, spire = spire_host, spire_host.spire
    api = Api(host)
    job_id = api.create(
        {"kind": "worker", "command": 'printf %s "$GITHUB_TOKEN" | sha256sum; echo done'}
    )
    job = api.wait(job_id, FINAL, timeout_s=180)
    log = api.log(job_id)
    assert job["status"] == "succeeded", (job, log, host.log("spire-agent"))
    assert sha(SECRETS["GITHUB_TOKEN"]) in log and "done" in log
    # The token service granted it to the SVID's SPIFFE ID (spire mode: no peer facts).
    assert host.token_config["mode"] == "spire"
    from_file = host.settings.spire_bundle == "file"
    assert bool(host.token_config["spire"]["bundle_file"]) == from_file
    assert bool(host.token_config["spire"]["agent_socket"]) != from_file
    audit = [
        json.loads(line) for line in Path(host.token_config["audit_log"]).read_text().splitlines()
    ]
    [line] = [a for a in audit if a.get("job") == job_id]
    assert line["outcome"] == "granted"
    assert line["spiffe_id"] == spiffe_id(job_id)

    # The registrar deletes the finished job's entry (right after the final state).
    def entry_gone() -> bool:
        shown = spire.server_cli("entry", "show", "-selector", f"flashpods:job:{job_id}")
        return job_id not in shown.stdout

    wait_for("the finished job's entry was not deleted", entry_gone, 30,
             logs=[host.paths.service_log("api"), host.paths.service_log("reaper")])  # fmt: skip


def fetch_in(host, job_id: str, *extra: str):
    return host.podman(
        "exec", job_id, "/flashpods/bin/spire-agent", "api", "fetch", "jwt",
        "-audience", "flashpods-token", "-socketPath", "/run/spire/sockets/agent.sock",
        "-timeout", "5s", *extra,
    )  # fmt: skip


def test_a_job_cannot_get_another_jobs_svid(devhost_factory):
    host = devhost_factory(attestation="spire")
    api = Api(host)
    workspaces = Path(host.api_config["storage"]["workspaces"])
    hold = "while [ ! -e /workspace/go ]; do sleep 0.1; done"
    victim = api.create({"kind": "worker", "command": hold})
    thief = api.create({"kind": "worker", "command": hold})
    for jid in (victim, thief):
        wait_container_running(host, jid)

    # The thief is attested, as itself (once its new entry reached the agent).
    wait_for("the thief's entry never reached the agent",
             lambda: fetch_in(host, thief).returncode == 0, 60,
             logs=[host.paths.service_log("spire-agent")])  # fmt: skip
    own = fetch_in(host, thief)
    assert own.returncode == 0 and f"token({spiffe_id(thief)})" in own.stdout, own.stderr
    assert spiffe_id(victim) not in own.stdout
    stolen = fetch_in(host, thief, "-spiffeID", spiffe_id(victim))
    assert stolen.returncode != 0 and "token(" not in stolen.stdout, stolen.stdout
    assert "no identity issued" in stolen.stderr + stolen.stdout, stolen.stderr

    for jid in (victim, thief):
        (workspaces / jid / "go").touch()
    for jid in (victim, thief):
        assert api.wait(jid, FINAL, timeout_s=120)["status"] == "succeeded"


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def _owner(path: Path) -> tuple[str, int]:
    st = path.stat()
    return pwd.getpwuid(st.st_uid).pw_name, stat.S_IMODE(st.st_mode)


def test_spire_services_run_with_least_privilege(devhost_factory):
    host = devhost_factory(attestation="spire")
    spire, acc = host.spire, host.accounts
    cap_sys_ptrace = 1 << 19
    agent, server, token = (
        _status(host._services[name].pid) for name in ("spire-agent", "spire-server", "token")
    )
    # The agent: its own non-root account, exactly CAP_SYS_PTRACE (the attestor reads
    # job processes' PID namespaces), and nothing it could pass on beyond that.
    assert agent["Uid"].split()[0] == str(acc.token.uid)
    for field in ("CapEff", "CapPrm", "CapAmb"):
        assert int(agent[field], 16) == cap_sys_ptrace, (field, agent[field])
    # The server (the registrar's admin socket) holds no capability at all; the token
    # service keeps CAP_SYS_PTRACE in spire mode too, and only that: its per-job
    # connection cap reads the caller's PID namespace at accept (docs/security.md).
    assert server["Uid"].split()[0] == str(acc.api.uid)
    assert int(server["CapEff"], 16) == 0 and int(server["CapAmb"], 16) == 0
    assert int(token["CapEff"], 16) == cap_sys_ptrace
    # The admin socket and both data directories are private to their users; only
    # the Workload API socket is reachable by jobs (and the token service).
    assert _owner(spire.paths.server_dir) == (acc.api.name, 0o700)
    assert _owner(spire.paths.agent_data) == (acc.token.name, 0o700)
    assert _owner(spire.paths.agent_public) == (acc.token.name, 0o755)
    assert spire.paths.agent_socket.is_socket()


def test_agent_restart_keeps_running_jobs_served(devhost_factory):
    """spire-agent restarts (an upgrade, a crash the supervisor undoes) while a job
    runs: the job's Workload API must still answer, as the token socket does after a
    token service restart."""
    host = devhost_factory(attestation="spire")
    api = Api(host)
    job_id = api.create({"kind": "worker", "command": "sleep 600"})
    wait_container_running(host, job_id)
    assert svid_in(host, job_id)
    host.kill("spire-agent")
    host.start("spire-agent")
    assert svid_in(host, job_id, timeout_s=30)
    # The mounted directory holds the agent's socket and nothing else, on both sides.
    inside = host.podman("exec", job_id, "ls", "-A", "/run/spire/sockets")
    assert inside.stdout.split() == ["agent.sock"], inside
    assert os.listdir(host.spire.paths.agent_public) == ["agent.sock"]
    api.s.post(f"{api.url}/jobs/{job_id}/kill", timeout=30)
