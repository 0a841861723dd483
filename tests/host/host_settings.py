"""Settings of the dev host the host simulation starts (shared by fixtures and tests)."""

from __future__ import annotations

import pwd

import topology as topo
from topology import Topology

WORKER_IMAGE = "localhost/flashpods-worker:latest"
AGENT_IMAGE = "localhost/flashpods-agent:latest"
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


# The credential proxy on the host simulation (tests/host/test_proxy_boundary.py): names
# the proxy pins to the topology's addresses (`static_hosts`, as a DNS answer would), so
# the direct-TLS shape (SNI names the host) can aim at every place a job may not reach.
# A secret of its own with a host rule gives the intercepted path (TLS terminated at the
# proxy) the same targets; the token rows' secrets stay on environment delivery, which
# V8-V12 check.
PROXY_SECRET = "PROXY_PROBE_TOKEN"
PROXY_INTERNET_NAME = "internet.test"
PROXY_TARGET_NAMES = {
    "api.test": topo.HOST_TUNNEL,
    "public.test": topo.HOST_PUBLIC,
    "loopback.test": "127.0.0.1",
    "resolver.test": topo.RESOLVER,
    "slirp.test": topo.SLIRP_GATEWAY,
    "laptop.test": topo.LAPTOP_TUNNEL,
    "laptop-routed.test": topo.LAPTOP_ROUTED,
    "metadata.test": topo.METADATA,
    "private.test": topo.PRIVATE[0],
    "special.test": topo.SPECIAL4[0],
    "ula.test": topo.ULA6,
    "nat64-metadata.test": topo.EMBEDDED6_NONPUBLIC[0],
}
PROXY_RULED = {f"ruled-{n}": a for n, a in PROXY_TARGET_NAMES.items()}
PROXY_RULED_INTERNET = f"ruled-{PROXY_INTERNET_NAME}"


def proxy_block(upstream_ca: str) -> dict:
    """The token config's `proxy` block of the tests/host dev host."""
    pins = {**PROXY_TARGET_NAMES, **PROXY_RULED, PROXY_INTERNET_NAME: topo.INTERNET}
    pins[PROXY_RULED_INTERNET] = topo.INTERNET
    return {
        "rules": {PROXY_SECRET: sorted([*PROXY_RULED, PROXY_RULED_INTERNET])},
        "static_hosts": pins,
        "upstream_ca_file": upstream_ca,
    }
