"""Spire mode: the helper fetches a JWT-SVID with a stand-in `spire-agent`
CLI that prints the real CLI's output format, and presents it as a Bearer
token to the stand-in token service."""

from __future__ import annotations

import time

from helper_standin import agent_calls, grant, pretty_jwt_output, write_agent_script
from helper_support import base_env, run_helper

JWT = (
    "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJzcGlmZmU6Ly9mbGFzaHBvZHMuaW50ZXJuYWwvam9iL2oxL3dvcmtlciJ9.c2ln"
)
SPIFFE_ID = "spiffe://flashpods.internal/job/j1/worker"
PRINT_TOKEN = ["--", "/bin/sh", "-c", 'printf "%s" "$GITHUB_TOKEN"']


def spire_env(workdir, server, agent, **extra):
    settings = {
        "FLASHPODS_TOKEN_SOCKET": str(server.path),
        "FLASHPODS_ATTESTATION": "spire",
        "FLASHPODS_SPIRE_AGENT": str(agent),
        "SPIFFE_ENDPOINT_SOCKET": "unix:///run/spire/sockets/agent.sock",
    }
    return base_env(workdir, **(settings | extra))


def test_svid_is_fetched_with_the_real_cli_flags_and_sent_as_bearer(helper, workdir, token_server):
    server = token_server(grant({"GITHUB_TOKEN": "ghp-spire"}))
    agent = write_agent_script(workdir / "spire-agent", output=pretty_jwt_output(SPIFFE_ID, JWT))

    result = run_helper(helper, PRINT_TOKEN, spire_env(workdir, server, agent))

    assert result.returncode == 0, result.stderr
    assert result.stdout == "ghp-spire"
    assert agent_calls(agent) == [
        "api fetch jwt -audience flashpods-token -socketPath /run/spire/sockets/agent.sock"
    ]
    assert server.headers()["authorization"] == f"Bearer {JWT}"
    assert JWT not in result.stderr


def test_first_token_is_used_and_hint_lines_are_ignored(helper, workdir, token_server):
    server = token_server(grant({}))
    output = (
        f"token({SPIFFE_ID}):\n\t{JWT}\nhint({SPIFFE_ID}):\n\texternal\n"
        "token(spiffe://flashpods.internal/other):\n\tAAA.BBB.CCC\n"
        'bundle(spiffe://flashpods.internal):\n\t{"keys":[]}\n'
    )
    agent = write_agent_script(workdir / "spire-agent", output=output)
    env = spire_env(workdir, server, agent, SPIFFE_ENDPOINT_SOCKET="unix:/tmp/agent.sock")

    result = run_helper(helper, ["--", "/bin/true"], env)

    assert result.returncode == 0, result.stderr
    assert server.headers()["authorization"] == f"Bearer {JWT}"
    assert agent_calls(agent)[0].endswith("-socketPath /tmp/agent.sock")


def test_retries_until_the_agent_can_attest(helper, workdir, token_server):
    server = token_server(grant({"GITHUB_TOKEN": "after-retry"}))
    agent = write_agent_script(
        workdir / "spire-agent", output=pretty_jwt_output(SPIFFE_ID, JWT), fail_times=3
    )

    started = time.monotonic()
    result = run_helper(helper, PRINT_TOKEN, spire_env(workdir, server, agent))

    assert result.returncode == 0, result.stderr
    assert result.stdout == "after-retry"
    assert len(agent_calls(agent)) == 4
    assert time.monotonic() - started < 10  # backoff, not a fixed long sleep


def test_gives_up_after_the_wait_and_says_why(helper, workdir, token_server):
    server = token_server(grant({"GITHUB_TOKEN": "never"}))
    agent = write_agent_script(workdir / "spire-agent", output="", always_fail=True)
    env = spire_env(workdir, server, agent, FLASHPODS_SVID_WAIT_S="2")

    started = time.monotonic()
    result = run_helper(helper, PRINT_TOKEN, env)
    elapsed = time.monotonic() - started

    assert result.returncode == 125
    assert result.stdout == ""
    assert "could not fetch a JWT-SVID (audience flashpods-token)" in result.stderr
    assert "in 2 s" in result.stderr
    assert "rpc error: code = Unavailable" in result.stderr
    assert result.stderr.count("\n") == 1
    assert 1.5 < elapsed < 10
    assert len(agent_calls(agent)) >= 2
    assert server.requests == []  # no SVID, no exchange


def test_output_without_a_jwt_is_an_error(helper, workdir, token_server):
    server = token_server(grant({}))
    agent = write_agent_script(
        workdir / "spire-agent",
        output=f"token({SPIFFE_ID}):\n\tnot a jwt\r\nX: injected\n",
    )
    env = spire_env(workdir, server, agent, FLASHPODS_SVID_WAIT_S="0")

    result = run_helper(helper, ["--", "/bin/true"], env)

    assert result.returncode == 125
    assert "printed no token(...) line with a JWT" in result.stderr
    assert server.requests == []


def test_missing_agent_binary_fails_at_once(helper, workdir, token_server):
    server = token_server(grant({}))
    env = spire_env(workdir, server, workdir / "no-spire-agent")

    started = time.monotonic()
    result = run_helper(helper, ["--", "/bin/true"], env)

    assert result.returncode == 125
    assert "cannot run the SPIRE agent CLI" in result.stderr
    assert "FLASHPODS_SPIRE_AGENT" in result.stderr
    assert time.monotonic() - started < 5


def test_optional_mode_runs_without_an_svid(helper, workdir, token_server):
    server = token_server(grant({"GITHUB_TOKEN": "never"}))
    agent = write_agent_script(workdir / "spire-agent", output="", always_fail=True)
    env = spire_env(workdir, server, agent, FLASHPODS_SVID_WAIT_S="0", FLASHPODS_SECRETS="optional")

    result = run_helper(helper, PRINT_TOKEN, env)

    assert result.returncode == 0
    assert result.stdout == ""
    assert "warning: could not fetch a JWT-SVID" in result.stderr


def test_relative_endpoint_is_rejected(helper, workdir, token_server):
    server = token_server(grant({}))
    agent = write_agent_script(workdir / "spire-agent", output=pretty_jwt_output(SPIFFE_ID, JWT))
    env = spire_env(workdir, server, agent, SPIFFE_ENDPOINT_SOCKET="tcp://127.0.0.1:1")

    result = run_helper(helper, ["--", "/bin/true"], env)

    assert result.returncode == 125
    assert "SPIFFE_ENDPOINT_SOCKET must be unix:///<absolute path>" in result.stderr
