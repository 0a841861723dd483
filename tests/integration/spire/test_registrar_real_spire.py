"""The API's registrar (services/api/flashpods_api/registrar.py) against a real
spire-server v1.13.3 (the dev host's, flashpods_devhost.spire): the entries it creates
carry the flashpods attestor's selectors and the agent as parent; unregister and sweep
delete exactly the job entries they should; the server's refusals become sentences.
(This replaced the stand-in spire-server executable of the unit tests.)"""

from __future__ import annotations

import json
import secrets
import shutil
from pathlib import Path

import pytest
from flashpods_api.registrar import RegistrarError, SpireRegistrar
from flashpods_devhost import probes
from flashpods_devhost.accounts import Account
from flashpods_devhost.configs import TRUST_DOMAIN
from flashpods_devhost.spire import AGENT_ID, Spire, SpirePaths, install
from flashpods_token.identity import identity_for_kind

# On a machine without the SPIRE cache the first test builds SPIRE (scripts/lib/spire.sh,
# tens of minutes cold): allow for it; a warm run takes seconds.
pytestmark = [pytest.mark.slow, pytest.mark.root, pytest.mark.timeout(3600)]
INSTANCE = "t-registrar"


@pytest.fixture(scope="module")
def server():
    """The dev host's spire-server alone (no agent, no dev host), as root."""
    root = Path("/var/tmp") / f"flashpods-spire-reg-{secrets.token_hex(4)}"
    root.mkdir(mode=0o700)
    me = Account("root", 0, 0, Path("/root"))
    spire = Spire(
        install(), SpirePaths(root / "spire"), podman_socket=Path("/nonexistent"),
        instance=INSTANCE, server_account=me, agent_account=me, switch=False,
        server_port=probes.free_port("127.0.0.1", None),
    )  # fmt: skip
    spire.prepare()
    service = spire.server_service(root / "spire-server.log", root)
    service.start()
    try:
        probes.wait_until("spire-server", spire.server_healthy, 60, service.check_alive)
        yield spire
    finally:
        service.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def registrar(server) -> SpireRegistrar:
    return SpireRegistrar(
        server_cli=str(server.bins.server),
        server_socket=str(server.paths.server_socket),
        trust_domain=TRUST_DOMAIN,
        parent_id=AGENT_ID,
        jwt_svid_ttl_s=120,
        instance=INSTANCE,
    )


def entries(server) -> dict[str, dict]:
    """SPIFFE ID path -> entry, for every entry on the server."""
    out = server.server_cli("entry", "show", "-output", "json")
    return {e["spiffe_id"]["path"]: e for e in json.loads(out.stdout).get("entries") or []}


def selectors(entry: dict) -> set[str]:
    return {f"{s['type']}:{s['value']}" for s in entry["selectors"]}


def new_job() -> str:
    return f"job_{secrets.token_hex(6)}"


def path_of(job_id: str, kind: str) -> str:
    """The entry's SPIFFE ID path, as the token service's identity module names it."""
    spiffe_id = identity_for_kind(TRUST_DOMAIN, job_id, kind).spiffe_id
    return spiffe_id[len(f"spiffe://{TRUST_DOMAIN}") :]


def test_register_creates_the_attestor_selectors_under_the_agent(server, registrar):
    worker, agent = new_job(), new_job()
    registrar.register(worker, "worker")
    registrar.register(agent, "sub_agent")
    registrar.register(worker, "worker")  # a retry after a crash: AlreadyExists is fine
    got = entries(server)
    w, a = got[path_of(worker, "worker")], got[path_of(agent, "sub_agent")]
    assert selectors(w) == {
        f"flashpods:job:{worker}",
        "flashpods:kind:worker",
        f"flashpods:instance:{INSTANCE}",
    }
    assert selectors(a) == {
        f"flashpods:job:{agent}",
        "flashpods:kind:sub_agent",
        f"flashpods:instance:{INSTANCE}",
    }
    for e in (w, a):
        assert e["parent_id"] == {"trust_domain": TRUST_DOMAIN, "path": "/agent/host"}
        assert e["jwt_svid_ttl"] == 120
    assert sum(1 for p in got if p == path_of(worker, "worker")) == 1


def test_unregister_deletes_only_that_jobs_entry(server, registrar):
    gone, kept = new_job(), new_job()
    registrar.register(gone, "worker")
    registrar.register(kept, "worker")
    registrar.unregister(gone)
    registrar.unregister(gone)  # idempotent
    registrar.unregister(new_job())  # never registered: nothing to do
    got = entries(server)
    assert path_of(gone, "worker") not in got and path_of(kept, "worker") in got


def test_sweep_deletes_entries_of_jobs_that_are_not_live_and_nothing_else(server, registrar):
    live, dead = new_job(), new_job()
    registrar.register(live, "worker")
    registrar.register(dead, "sub_agent")
    foreign = f"/other/{secrets.token_hex(4)}"
    server.server_cli(
        "entry", "create", "-parentID", AGENT_ID,
        "-spiffeID", f"spiffe://{TRUST_DOMAIN}{foreign}", "-selector", "unix:uid:0",
    )  # fmt: skip
    everything_live = {p.split("/")[2] for p in entries(server) if p.startswith("/job/")}
    registrar.sweep((everything_live - {dead}) | {live})
    got = entries(server)
    assert path_of(live, "worker") in got and foreign in got
    assert path_of(dead, "sub_agent") not in got


def test_refused_entry_is_a_sentence(server, registrar):
    # An entry whose parent is in another trust domain: the server refuses it.
    registrar.parent_id = "spiffe://elsewhere.example/agent/host"
    with pytest.raises(RegistrarError, match="spire-server refused the entry"):
        registrar.register(new_job(), "worker")


def test_unreachable_server_is_a_sentence(server, registrar):
    registrar.server_socket = str(server.paths.root / "no-such.sock")
    with pytest.raises(RegistrarError, match="spire-server entry create failed"):
        registrar.register(new_job(), "worker")
