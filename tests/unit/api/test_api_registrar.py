"""The API's registrar in spire mode, driven against a STAND-IN spire-server executable
(SPIRE cannot run on this machine): it records every argument list it is called with
and keeps entries like the real server, answering in the real CLI's `-output json` shape.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from flashpods_api.registrar import (
    NoopRegistrar,
    RegistrarError,
    SpireRegistrar,
    make_registrar,
)

STANDIN = Path(__file__).with_name("standin_spire_server.py")
PARENT = "spiffe://flashpods.internal/agent/host"
SOCK = "/run/spire/server/private/api.sock"


@pytest.fixture
def standin(tmp_path, monkeypatch):
    monkeypatch.setenv("STANDIN_DIR", str(tmp_path))
    monkeypatch.delenv("STANDIN_FAIL", raising=False)
    return tmp_path


def calls(d: Path) -> list[list[str]]:
    return [json.loads(line) for line in (d / "argv.jsonl").read_text().splitlines()]


def entries(d: Path) -> list[dict]:
    p = d / "entries.json"
    return json.loads(p.read_text()) if p.exists() else []


def registrar(**kw) -> SpireRegistrar:
    cfg = {
        "attestation": "spire",
        "spire": {
            "server_cli": str(STANDIN),
            "server_socket": SOCK,
            "trust_domain": "flashpods.internal",
            "parent_id": PARENT,
            "jwt_svid_ttl_s": 300,
            "agent_socket": "/run/spire/sockets/agent.sock",
            **kw,
        },
    }
    r = make_registrar(cfg)
    assert isinstance(r, SpireRegistrar)
    return r


def test_register_runs_entry_create_with_the_exact_flags_standin(standin):
    registrar().register("job_aaaabbbbcccc", "sub_agent")
    assert calls(standin) == [
        [
            "entry", "create",
            "-parentID", PARENT,
            "-spiffeID", "spiffe://flashpods.internal/job/job_aaaabbbbcccc/sub_agent",
            "-selector", "flashpods:job:job_aaaabbbbcccc",
            "-selector", "flashpods:kind:sub_agent",
            "-selector", "flashpods:instance:dev",
            "-jwtSVIDTTL", "300",
            "-socketPath", SOCK,
            "-output", "json",
        ]
    ]  # fmt: skip
    [entry] = entries(standin)
    assert entry["spiffe_id"]["path"] == "/job/job_aaaabbbbcccc/sub_agent"


def test_worker_gets_the_worker_path_and_a_retry_is_idempotent_standin(standin):
    r = registrar(jwt_svid_ttl_s=60)
    r.register("job_wwwwxxxxyyyy", "worker")
    r.register("job_wwwwxxxxyyyy", "worker")  # AlreadyExists after a crash: fine
    [entry] = entries(standin)
    assert entry["spiffe_id"]["path"] == "/job/job_wwwwxxxxyyyy/worker"
    assert entry["jwt_svid_ttl"] == 60


def test_unregister_shows_by_selector_then_deletes_by_entry_id_standin(standin):
    r = registrar()
    r.register("job_aaaaaaaaaaaa", "worker")
    r.register("job_bbbbbbbbbbbb", "worker")
    entry_id = entries(standin)[0]["id"]
    r.unregister("job_aaaaaaaaaaaa")
    assert calls(standin)[-2:] == [
        ["entry", "show", "-selector", "flashpods:job:job_aaaaaaaaaaaa",
         "-socketPath", SOCK, "-output", "json"],
        ["entry", "delete", "-entryID", entry_id, "-socketPath", SOCK, "-output", "json"],
    ]  # fmt: skip
    assert [e["spiffe_id"]["path"] for e in entries(standin)] == ["/job/job_bbbbbbbbbbbb/worker"]
    r.unregister("job_aaaaaaaaaaaa")  # idempotent: nothing left to delete, no error


def test_sweep_deletes_entries_of_jobs_not_live_and_leaves_others_standin(standin):
    r = registrar()
    for job in ("job_live00000000", "job_dead00000000", "job_dead11111111"):
        r.register(job, "worker")
    # An entry that is not ours (another path) must survive the sweep.
    other = SpireRegistrar(str(STANDIN), SOCK, "flashpods.internal", PARENT)
    other._run("create", "-parentID", PARENT, "-spiffeID",
               "spiffe://flashpods.internal/spire-agent-helper", "-selector", "unix:uid:0",
               "-jwtSVIDTTL", "60")  # fmt: skip
    r.sweep({"job_live00000000"})
    assert calls(standin)[-3][:3] == ["entry", "show", "-parentID"]
    paths = sorted(e["spiffe_id"]["path"] for e in entries(standin))
    assert paths == ["/job/job_live00000000/worker", "/spire-agent-helper"]


@pytest.mark.parametrize(
    ("fail", "action", "message"),
    [
        ("create_exit", "register", "spire-server entry create failed (exit 1)"),
        ("create_status", "register", "spire-server refused the entry for job"),
        ("show_garbage", "unregister", "did not print JSON"),
        ("delete_status", "unregister", "could not delete entry"),
    ],
)
def test_errors_become_a_sentence_standin(standin, monkeypatch, fail, action, message):
    r = registrar()
    r.register("job_errerrerrerr", "worker")
    monkeypatch.setenv("STANDIN_FAIL", fail)
    with pytest.raises(RegistrarError, match=message.replace("(", r"\(").replace(")", r"\)")):
        if action == "register":
            r.register("job_errerrerrer2", "worker")
        else:
            r.unregister("job_errerrerrerr")


def test_missing_cli_and_bad_input_are_clear_errors(standin):
    with pytest.raises(RegistrarError, match="not found; set spire.server_cli"):
        registrar(server_cli="/nonexistent/spire-server").register("job_aaaaaaaaaaaa", "worker")
    with pytest.raises(RegistrarError, match="neither worker nor sub_agent"):
        registrar().register("job_aaaaaaaaaaaa", "admin")
    with pytest.raises(RegistrarError, match="not valid"):
        registrar().register("../etc", "worker")
    with pytest.raises(RegistrarError, match="spire.parent_id is not set"):
        make_registrar(
            {"attestation": "spire", "spire": {"server_socket": "/s", "trust_domain": "t"}}
        )
    assert not (standin / "argv.jsonl").exists() or len(calls(standin)) == 0


def test_cli_that_hangs_times_out(tmp_path):
    hang = tmp_path / "spire-server"
    hang.write_text("#!/bin/sh\nexec sleep 30\n")
    hang.chmod(0o755)
    r = SpireRegistrar(str(hang), SOCK, "flashpods.internal", PARENT, timeout_s=0.5)
    with pytest.raises(RegistrarError, match="did not answer within"):
        r.register("job_aaaaaaaaaaaa", "worker")


def test_peer_mode_registrar_does_nothing(tmp_path):
    r = make_registrar({"attestation": "peer", "spire": {"server_cli": "/nonexistent"}})
    assert isinstance(r, NoopRegistrar)
    r.register("job_aaaaaaaaaaaa", "worker")
    r.unregister("job_aaaaaaaaaaaa")
    r.sweep(set())
    assert os.listdir(tmp_path) == []


def test_accepts_the_apis_config_object(standin):
    from flashpods_api.config import Config

    cfg = Config({"attestation": "peer"})
    assert isinstance(make_registrar(cfg), NoopRegistrar)
    cfg = Config({"attestation": "spire", "spire": {
        "server_cli": str(STANDIN), "server_socket": SOCK,
        "trust_domain": "flashpods.internal", "parent_id": PARENT}})  # fmt: skip
    make_registrar(cfg).register("job_cfgcfgcfgcfg", "worker")
    assert entries(standin)[0]["spiffe_id"]["path"] == "/job/job_cfgcfgcfgcfg/worker"
