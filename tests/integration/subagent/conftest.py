"""Fixtures for real Claude Code sub-agents on a real dev host (needs root).

Topology (netlab.py): the dev host runs in its own network namespace with the project's
firewall loaded; the stand-in model endpoint listens on 203.0.113.10 in an "internet"
namespace behind the host's default route. There is no laptop and no tunnel here (the
firewall's WireGuard interface does not exist): the test process reaches the API and
rsyncd as one of the host's own processes (from inside the host namespace), which the
firewall lets through, while every job's traffic to the host is refused as in production.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from netlab import MODEL_ADDR, Netlab
from standin_model import StandinModel, StandinServer
from subagent_support import HostApi

REPO = Path(__file__).resolve().parents[3]
AGENT_IMAGE = "localhost/flashpods-agent:latest"
FIREWALL_VALUES = {"wg_if": "fpa-nowg", "laptop_addr": "10.0.0.2", "resolvers": []}
BUILD_TIMEOUT_S = 1800


@pytest.fixture(scope="session")
def agent_image() -> str:
    """The agent image, built (or found up to date) by the same script CI and users run."""
    if os.geteuid() != 0:
        pytest.fail("the sub-agent tests need root (network namespaces, nftables, user switching)")
    build = subprocess.run(
        [str(REPO / "images" / "agent" / "build.sh")],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
    )
    assert build.returncode == 0, f"images/agent/build.sh failed:\n{build.stderr[-3000:]}"
    return AGENT_IMAGE


@pytest.fixture
def lab() -> Iterator[Netlab]:
    with Netlab() as netlab:
        yield netlab


@pytest.fixture
def model(lab: Netlab) -> Iterator[StandinServer]:
    """The scripted model endpoint on 203.0.113.10 (a random port) in the internet namespace."""
    with StandinServer(StandinModel(), host=MODEL_ADDR, netns=lab.path(lab.inet)) as server:
        yield server


@pytest.fixture
def subagent_host(
    lab: Netlab, model: StandinServer, agent_image: str, devhost_factory: Callable
) -> Iterator[Callable[..., HostApi]]:
    """Start a dev host in the lab whose sub-agents talk to the stand-in model.

    `agent_env` is merged into the API config's agent.env (the host's sub-agent settings);
    other keywords go to devhost_factory. devhost_factory is requested last so that its
    hosts stop before the stand-in and the namespaces go away.
    """
    apis: list[HostApi] = []

    def make(agent_env: dict[str, str] | None = None, **overrides: object) -> HostApi:
        env = {
            "ANTHROPIC_BASE_URL": f"http://{MODEL_ADDR}:{model.port}",
            "ANTHROPIC_MODEL": "standin-model",
            "FLASHPODS_AGENT_MAX_TURNS": "20",
            # A broken endpoint should fail a test quickly, not after minutes of retries.
            "CLAUDE_CODE_MAX_RETRIES": "1",
        } | (agent_env or {})
        api_overrides = {
            "reaper": {"interval_s": 0.2},
            "kill_grace_s": 5,
            "sub_agent": {"env": env},
        } | dict(overrides.pop("api_overrides", {}))  # type: ignore[arg-type]
        host = devhost_factory(
            netns=lab.host,
            firewall=True,
            firewall_values=FIREWALL_VALUES,
            api_overrides=api_overrides,
            **overrides,
        )
        api = HostApi(host, lab)
        apis.append(api)
        return api

    yield make
    for api in apis:
        api.close()
