"""The API's registrar (services/api/flashpods_api/registrar.py) against a real
spire-server v1.13.3: the entries it creates carry the flashpods attestor's selectors
and the agent as parent; unregister and sweep delete exactly the job entries they should."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest
from flashpods_api.registrar import RegistrarError, SpireRegistrar
from spire_support import AGENT_ID, TRUST_DOMAIN, Spire, install

# On a machine without the SPIRE cache the first test builds SPIRE (scripts/lib/spire.sh,
# tens of minutes cold): allow for it; a warm run takes seconds.
pytestmark = [pytest.mark.slow, pytest.mark.root, pytest.mark.timeout(3600)]
INSTANCE = "t-registrar"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    bins = install()
    root = Path("/var/tmp") / f"flashpods-spire-reg-{secrets.token_hex(4)}"
    s = Spire(bins, root, "", INSTANCE, with_agent=False)
    yield s
    s.stop()


@pytest.fixture
def registrar(server) -> SpireRegistrar:
    return SpireRegistrar(
        server_cli=str(server.bins["spire_server"]),
        server_socket=str(server.server_socket),
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


def test_register_creates_the_attestor_selectors_under_the_agent(server, registrar):
    worker, agent = new_job(), new_job()
    registrar.register(worker, "worker")
    registrar.register(agent, "sub_agent")
    registrar.register(worker, "worker")  # a retry after a crash: AlreadyExists is fine
    got = entries(server)
    w, a = got[f"/job/{worker}/worker"], got[f"/job/{agent}/sub_agent"]
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
    assert sum(1 for p in got if p == f"/job/{worker}/worker") == 1


def test_unregister_deletes_only_that_jobs_entry(server, registrar):
    gone, kept = new_job(), new_job()
    registrar.register(gone, "worker")
    registrar.register(kept, "worker")
    registrar.unregister(gone)
    registrar.unregister(gone)  # idempotent
    registrar.unregister(new_job())  # never registered: nothing to do
    got = entries(server)
    assert f"/job/{gone}/worker" not in got and f"/job/{kept}/worker" in got


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
    assert f"/job/{live}/worker" in got and foreign in got
    assert f"/job/{dead}/sub_agent" not in got


def test_unreachable_server_is_a_sentence(server, registrar):
    registrar.server_socket = str(server.root / "no-such.sock")
    with pytest.raises(RegistrarError, match="spire-server entry create failed"):
        registrar.register(new_job(), "worker")
