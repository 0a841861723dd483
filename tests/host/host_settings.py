"""Settings of the dev host the host simulation starts (shared by fixtures and tests)."""

from __future__ import annotations

import pwd

import topology as topo
from topology import Topology

WORKER_IMAGE = "localhost/flashpods-worker:latest"
# The uid that runs rootless Podman and every job (scripts/lib creates the user).
JOB_UID = pwd.getpwnam("flashpods").pw_uid
# Short retention so that V16 sees files expire within the test.
RETENTION = {"artifacts_s": 6, "logs_s": 8, "uploads_s": 6}


def firewall_values(t: Topology) -> dict:
    return {
        "wg_if": t.wg_host,
        "laptop_addr": topo.LAPTOP_TUNNEL,
        "api_port": topo.API_PORT,
        "rsync_port": topo.RSYNC_PORT,
        "job_uid": JOB_UID,
        "resolvers": [topo.RESOLVER, topo.RESOLVER_LOOPBACK, topo.RESOLVER6],
    }
