"""Credentials never travel through the API: not in agent.env, not in a request's env,
and a sub_agent request cannot point the agent's key at another endpoint."""

from __future__ import annotations

import pytest
from flashpods_api.config import ConfigError, from_dict


@pytest.mark.parametrize(
    "name",
    [
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_AUTH_TOKEN",
        "GITHUB_TOKEN",
        "MY_SECRET",
        "AWS_KEY",
        "db_password",
    ],
)
def test_agent_env_refuses_credential_names(name):
    with pytest.raises(ConfigError, match=f"agent.env.{name} looks like a credential"):
        from_dict({"sub_agent": {"command": ["/a"], "env": {name: "x"}}})


@pytest.mark.parametrize("value", [1, None, ["a"], {"a": "b"}, True])
def test_agent_env_takes_strings_only(value):
    with pytest.raises(ConfigError, match="must be a string"):
        from_dict({"sub_agent": {"command": ["/a"], "env": {"ANTHROPIC_BASE_URL": value}}})


def test_agent_env_accepts_plain_settings():
    cfg = from_dict({"sub_agent": {"command": ["/a"], "env": {"ANTHROPIC_BASE_URL": "https://x"}}})
    assert cfg.sub_agent["env"] == {"ANTHROPIC_BASE_URL": "https://x"}


@pytest.mark.parametrize(
    "name",
    ["ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "GITHUB_TOKEN", "GH_TOKEN", "github_token"],
)
@pytest.mark.parametrize("kind", ["worker", "sub_agent"])
def test_request_env_refuses_credential_names(host, name, kind):
    body = {"kind": kind, "env": {name: "stolen"}}
    body.update({"command": "true"} if kind == "worker" else {"prompt": "hi"})
    resp = host.post("/jobs", body)
    assert resp.status_code == 400
    answer = resp.get_json()
    assert answer["code"] == "reserved_env"
    assert name in answer["error"] and "token service" in answer["error"]
    assert host.store.list_jobs(None, None, 10, None) == []


def test_sub_agent_request_cannot_set_anthropic_names(host):
    resp = host.post(
        "/jobs",
        {"kind": "sub_agent", "prompt": "hi", "env": {"ANTHROPIC_BASE_URL": "https://evil"}},
    )
    assert resp.status_code == 400
    assert resp.get_json()["code"] == "reserved_env"
    assert "agent.env" in resp.get_json()["error"]
    # A worker has no agent key to redirect: the name is an ordinary setting there.
    assert host.job("true", env={"ANTHROPIC_BASE_URL": "https://x"})["status"] == "running"


def test_agent_env_wins_for_anthropic_names_even_past_validation(make_host):
    host = make_host(
        sub_agent={
            "command": ["/agent"],
            "env": {"ANTHROPIC_BASE_URL": "https://host", "OTHER": "1"},
        }
    )
    job = {
        "id": "job_xxxxxxxxxxxx", "kind": "sub_agent", "prompt": "p", "image": "img",
        "resources": {},
        "env": {"ANTHROPIC_BASE_URL": "https://evil", "ANTHROPIC_MODEL": "m", "OTHER": "2"},
    }  # fmt: skip
    env = host.engine.specs.spec(job, None).env
    assert env["ANTHROPIC_BASE_URL"] == "https://host"
    assert "ANTHROPIC_MODEL" not in env
    assert env["OTHER"] == "2"  # non-ANTHROPIC names: the request's own setting
    assert env["FLASHPODS_PROMPT"] == "p"
