"""V19: the firewall holds in every network mode the host allows; the others are refused.

The owner rule holds in every rootless mode tried (test_network_boundary.py runs V5, V6,
V18 and V20 in slirp4netns through the API, and in slirp4netns with host loopback and in
`host` mode with containers started directly). What no host rule can hold is traffic
that never leaves Podman's rootless network namespace: on a rootless bridge, job
containers reach each other directly, on one network or across two. The API must
therefore refuse such modes.
"""

from __future__ import annotations

import pytest
from job_runner import CONTRACT_FLAGS, IMAGE

OTHER_JOB_PORT = 7000


@pytest.fixture
def bridges(topology):
    """Two rootless bridge networks, removed afterwards with their containers."""
    names = [f"fp{topology.tag}-br{i}" for i in (1, 2)]
    label = f"flashpods.instance=fp{topology.tag}-bridge"
    for name in names:
        topology.podman("network", "create", name)
    try:
        yield names, label
    finally:
        listed = topology.podman("ps", "-aq", "--filter", f"label={label}", check=False)
        if listed.stdout.split():
            topology.podman("rm", "-f", "-t", "0", *listed.stdout.split(), check=False)
        topology.podman("network", "rm", "-f", *names, check=False)


def test_V19_rootless_bridge_lets_jobs_reach_each_other(topology, devhost, bridges):
    """Why `bridge` is unsafe: this traffic stays inside Podman's rootless network
    namespace, where the host's ruleset never sees it."""
    (first, second), label = bridges
    common = ["--label", label, *CONTRACT_FLAGS]
    listener = f"while true; do echo other-job | nc -l -p {OTHER_JOB_PORT}; done"
    topology.podman("run", "-d", "--name", f"{first}-b", *common, "--network", first,
                    IMAGE, "sh", "-c", listener)  # fmt: skip
    fmt = f'{{{{(index .NetworkSettings.Networks "{first}").IPAddress}}}}'
    address = topology.podman("inspect", "--format", fmt, f"{first}-b").stdout.strip()
    assert address, "the listening job has no bridge address"
    probe = f"timeout 6 nc -w 3 {address} {OTHER_JOB_PORT} </dev/null"
    for network in (first, second):
        argv = ["run", "--rm", *common, "--network", network, IMAGE, "sh", "-c", probe]
        got = topology.podman(*argv, check=False)
        assert "other-job" in got.stdout, (network, got)


@pytest.mark.parametrize("mode", ["host", "bridge"])
def test_V19_api_refuses_network_modes_that_cannot_be_made_safe(devhost_factory, mode):
    """`host` shares the host's network namespace (its loopback-only and abstract unix
    sockets); `bridge` lets jobs reach each other (above). The API must not start
    with either: the error names the setting."""
    with pytest.raises(Exception, match="network_mode"):
        devhost_factory(api_overrides={"network_mode": mode}, healthz_timeout_s=30)
