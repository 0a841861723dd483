"""Fixtures of the host simulation: the namespace topology, the host's services, jobs.

Session-scoped: one topology and one dev host per run, built once and torn down at the
end, also when a test failed or the run was interrupted. The dev host is the real one
(flashpods_devhost.host.DevHost: podman service, token service, credential proxy,
rsyncd, API, reaper) started inside the host namespace with the project's firewall
loaded from the shared template, exactly as `scripts/dev-host` and the NixOS module
use it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import topology as topo
from flashpods_devhost.host import DevHost
from flashpods_devhost.pytest_plugin import TEST_SECRETS, new_settings
from host_settings import (
    AGENT_IMAGE,
    PROXY_INTERNET_NAME,
    PROXY_RULED_INTERNET,
    PROXY_SECRET,
    RETENTION,
    WORKER_IMAGE,
    firewall_values,
    proxy_block,
)
from job_runner import ApiJobs, PodmanJobs
from tls_material import write_ca_and_leaf
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
def upstream_tls(topology: Topology) -> Iterator[Path]:
    """A TLS server in the test internet (port 443 on every address of the router, so
    also on 169.254.169.254 and the private neighbours); its CA file, which the proxy
    trusts upstream."""
    with tempfile.TemporaryDirectory(prefix="fp-host-tls-", dir="/var/tmp") as tmp:
        os.chmod(tmp, 0o755)
        names = [PROXY_INTERNET_NAME, PROXY_RULED_INTERNET, topo.INTERNET]
        ca, chain, key = write_ca_and_leaf(Path(tmp), names)
        topology.standin(
            "inet", "tls", "tls-internet", "443", "--cert", str(chain), "--key", str(key)
        )
        yield ca


# What both dev hosts' APIs run: a sub-agent is the busybox image running its prompt as a
# shell script (the rows about sub-agents need what it can do, not Claude Code).
JOB_IMAGES = {
    "images": {
        "worker": WORKER_IMAGE,
        "sub_agent": WORKER_IMAGE,
        # The proxy rows need curl and python3 in the job.
        "allowed": [WORKER_IMAGE, AGENT_IMAGE],
    },
    "sub_agent": {"command": ["sh", "-c", 'eval "$FLASHPODS_PROMPT"'], "env": {}},
}


@pytest.fixture(scope="session")
def devhost(topology: Topology, upstream_tls: Path) -> Iterator[DevHost]:
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
        # The credential proxy runs, as on a real host (a secret of its own has a rule).
        secrets={**TEST_SECRETS, PROXY_SECRET: "proxy-probe-" + os.urandom(12).hex()},
        token_overrides={"proxy": proxy_block(str(upstream_tls))},
        # The API's own second layer: only the laptop's address is a valid peer.
        api_overrides={
            "allowed_peers": [topo.LAPTOP_TUNNEL],
            "reaper": {"interval_s": 0.2},
            **JOB_IMAGES,
        },
    )
    host = DevHost(settings)
    try:
        host.start()
        yield host
    finally:
        host.stop(remove_root=True)


@pytest.fixture(scope="session")
def spire_devhost(topology: Topology, devhost: DevHost) -> Iterator[DevHost]:
    """A second dev host in the host's namespace, in spire mode: real spire-server and
    spire-agent with the flashpods attestor (docs/spire.md). Started only when a spire
    row asks for it. Its API listens on the namespace's loopback (the tunnel ports are
    the first host's); the first host's firewall table already holds every job uid,
    and so this host's jobs too."""
    settings = new_settings(
        netns=topology.ns["host"],
        attestation="spire",
        api_host="127.0.0.1",
        rsync_host="127.0.0.1",
        api_overrides={"allowed_peers": ["127.0.0.1"], "reaper": {"interval_s": 0.2}, **JOB_IMAGES},
    )
    host = DevHost(settings)
    try:
        host.start()
        yield host
    finally:
        host.stop(remove_root=True)


@pytest.fixture(params=["peer", "spire"])
def token_host(request: pytest.FixtureRequest) -> tuple[ApiJobs, DevHost]:
    """(api_jobs, devhost) of the peer-mode host, then of the spire-mode host: the token
    rows (V8-V12, V15) run against both attestation modes."""
    if request.param == "peer":
        return request.getfixturevalue("api_jobs"), request.getfixturevalue("devhost")
    host = request.getfixturevalue("spire_devhost")
    # The spire host's API is on the namespace's loopback: call it from the host itself.
    return ApiJobs(request.getfixturevalue("topology"), host, role="host"), host


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
