"""Fixtures of the host simulation: the namespace topology, the host's services, jobs.

Session-scoped: one topology per run, built once and torn down at the end, also when
a test failed or the run was interrupted (finalizers run on KeyboardInterrupt too).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import topology as topo
from flashpods_devhost import render
from job_runner import PodmanJobs
from topology import Topology

if os.geteuid() != 0:  # pragma: no cover - CI runs as root
    raise pytest.UsageError("tests/host needs root: network namespaces, nftables, user switching")


def firewall_values(t: Topology) -> dict:
    return {
        "wg_if": t.wg_host,
        "laptop_addr": topo.LAPTOP_TUNNEL,
        "api_port": topo.API_PORT,
        "rsync_port": topo.RSYNC_PORT,
        "job_uid": 1001,
        "resolvers": [topo.RESOLVER, topo.RESOLVER_LOOPBACK, topo.RESOLVER6],
    }


@pytest.fixture(scope="session")
def topology() -> Iterator[Topology]:
    t = Topology()
    try:
        t.up()
        yield t
    finally:
        t.down()


@pytest.fixture(scope="session")
def firewall(topology: Topology) -> Iterator[str]:
    """The project's ruleset, rendered from the shared template, loaded into the host."""
    text = render.render_firewall(**firewall_values(topology))
    render.load_firewall(text, netns=topology.ns["host"])
    try:
        yield text
    finally:
        render.unload_firewall(netns=topology.ns["host"])


@pytest.fixture(scope="session")
def jobs(topology: Topology, firewall: str) -> Iterator[PodmanJobs]:
    runner = PodmanJobs(topology)
    try:
        yield runner
    finally:
        runner.remove_all()


@pytest.fixture(scope="session")
def services(topology: Topology, firewall: str) -> Topology:
    """Listeners on the API and rsync ports of the tunnel address."""
    topology.standin("host", "tcp", "api", str(topo.API_PORT), "--bind", topo.HOST_TUNNEL)
    topology.standin("host", "tcp", "rsyncd", str(topo.RSYNC_PORT), "--bind", topo.HOST_TUNNEL)
    return topology
