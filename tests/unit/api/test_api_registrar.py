"""The API's registrar in spire mode: configuration and the failures a real
spire-server will not produce on demand (a CLI that hangs or prints no JSON).

What it asks the real server, and how it reads the answers, is tested against a real
spire-server v1.13.3 in tests/integration/spire/test_registrar_real_spire.py (which
replaced the stand-in spire-server executable these tests used to drive).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from flashpods_api.registrar import (
    NoopRegistrar,
    RegistrarError,
    SpireRegistrar,
    make_registrar,
)

PARENT = "spiffe://flashpods.internal/agent/host"
SOCK = "/run/spire/server/private/api.sock"


def fake_cli(tmp_path: Path, script: str) -> str:
    """A spire-server that only does `script` (sh): for failures a real one cannot show."""
    cli = tmp_path / "spire-server"
    cli.write_text(f"#!/bin/sh\n{script}\n")
    cli.chmod(0o755)
    return str(cli)


def registrar(**kw) -> SpireRegistrar:
    cfg = {
        "attestation": "spire",
        "spire": {
            "server_cli": "/nonexistent/spire-server",
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


def test_output_that_is_not_json_is_a_sentence(tmp_path):
    r = registrar(server_cli=fake_cli(tmp_path, "echo 'Entry ID: 1'"))
    with pytest.raises(RegistrarError, match="did not print JSON"):
        r.unregister("job_errerrerrerr")


def test_a_delete_the_server_refuses_is_a_sentence(tmp_path):
    # `entry show` finds one entry; `entry delete` answers a non-OK, non-NotFound status.
    script = (
        'case "$2" in show) echo \'{"entries": [{"id": "e1", "spiffe_id": {"trust_domain": '
        '"flashpods.internal", "path": "/job/job_errerrerrerr/worker"}}]}\' ;; '
        'delete) echo \'{"results": [{"status": {"code": 7, "message": "denied"}}]}\' ;; esac'
    )
    r = registrar(server_cli=fake_cli(tmp_path, script))
    with pytest.raises(RegistrarError, match="could not delete entry e1: denied"):
        r.unregister("job_errerrerrerr")


def test_missing_cli_and_bad_input_are_clear_errors(tmp_path):
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


def test_accepts_the_apis_config_object():
    from flashpods_api.config import Config

    cfg = Config({"attestation": "peer"})
    assert isinstance(make_registrar(cfg), NoopRegistrar)
    cfg = Config({"attestation": "spire", "spire": {
        "server_cli": "/opt/spire/bin/spire-server", "server_socket": SOCK,
        "trust_domain": "flashpods.internal", "parent_id": PARENT}})  # fmt: skip
    r = make_registrar(cfg)
    assert isinstance(r, SpireRegistrar)
    assert (r.server_cli, r.server_socket, r.parent_id) == (
        "/opt/spire/bin/spire-server", SOCK, PARENT)  # fmt: skip
