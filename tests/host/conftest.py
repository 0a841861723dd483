"""Fixtures of the host simulation: the namespace topology, the host's services, jobs.

Session-scoped: one topology and one dev host per run, built once and torn down at the
end, also when a test failed or the run was interrupted. The dev host is the real one
(flashpods_devhost.host.DevHost: podman service, token service, rsyncd, API, reaper)
started inside the host namespace with the project's firewall loaded from the shared
template, exactly as `scripts/dev-host` and the NixOS module use it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import topology as topo
from flashpods_devhost.host import DevHost
from flashpods_devhost.pytest_plugin import new_settings
from host_settings import RETENTION, WORKER_IMAGE, firewall_values
from job_runner import ApiJobs, PodmanJobs
from topology import Topology

if os.geteuid() != 0:  # pragma: no cover - CI runs as root
    raise pytest.UsageError("tests/host needs root: network namespaces, nftables, user switching")


@pytest.fixture(scope="session")
def topology() -> Iterator[Topology]:
    t = Topology()
    try:
        t.up()
        yield t
    finally:
        t.down()


@pytest.fixture(scope="session")
def devhost(topology: Topology) -> Iterator[DevHost]:
    values = firewall_values(topology)
    settings = new_settings(
        netns=topology.ns["host"],
        firewall=True,
        firewall_values={k: values[k] for k in ("wg_if", "laptop_addr", "resolvers")},
        api_host=topo.HOST_TUNNEL,
        api_port=topo.API_PORT,
        rsync_host=topo.HOST_TUNNEL,
        rsync_port=topo.RSYNC_PORT,
        retention=dict(RETENTION),
        # The API's own second layer: only the laptop's address is a valid peer.
        api_overrides={
            "allowed_peers": [topo.LAPTOP_TUNNEL],
            "reaper": {"interval_s": 0.2},
            # A sub-agent here is the busybox image running its prompt as a shell
            # script: the rows about sub-agents need what it can do, not Claude Code.
            "images": {
                "worker": WORKER_IMAGE,
                "sub_agent": WORKER_IMAGE,
                "allowed": [WORKER_IMAGE],
            },
            "sub_agent": {"command": ["sh", "-c", 'eval "$FLASHPODS_PROMPT"'], "env": {}},
        },
    )
    host = DevHost(settings)
    try:
        host.start()
        yield host
    finally:
        host.stop(remove_root=True)


@pytest.fixture(scope="session")
def services(topology: Topology, devhost: DevHost) -> Topology:
    """The topology with the real host services up (API, rsyncd, token service)."""
    return topology


@pytest.fixture(scope="session")
def api_jobs(topology: Topology, devhost: DevHost) -> ApiJobs:
    return ApiJobs(topology, devhost)


@pytest.fixture(scope="session")
def jobs(topology: Topology, devhost: DevHost) -> Iterator[PodmanJobs]:
    """Containers started directly (for network modes the API does not offer)."""
    runner = PodmanJobs(topology)
    try:
        yield runner
    finally:
        runner.remove_all()


@pytest.fixture(scope="session")
def subordinate_jobs(topology: Topology, devhost: DevHost) -> Iterator[PodmanJobs]:
    """Containers of the job user running as `--user 1`: their processes, and so their
    sockets, carry one of the job user's subordinate uids on the host."""
    runner = PodmanJobs(topology, user="1")
    try:
        yield runner
    finally:
        runner.remove_all()
