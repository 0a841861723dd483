"""V3, V5-V7, V18-V20 with real packets: who reaches what on the host simulation.

Every "cannot" is tried from inside a real rootless job container against every
address the host has (tunnel, public, loopback, slirp4netns' gateway, the resolver's
address), in every network mode tried; each deny has its matching allow in the same
run, so a deny never passes because the target was down.
"""

from __future__ import annotations

import pytest
from flashpods_devhost.accounts import Account, subordinate_ids
from job_runner import container_probe
from topology import (
    API_PORT,
    EMBEDDED6_NONPUBLIC,
    EMBEDDED6_PUBLIC,
    GATEWAY,
    HOST_ADDRESSES,
    HOST_PUBLIC,
    HOST_PUBLIC6,
    HOST_TUNNEL,
    INTERNET,
    INTERNET6,
    INTERNET_PORT,
    JOB_USER,
    LAPTOP_PORT,
    LAPTOP_ROUTED,
    LAPTOP_TUNNEL,
    LINK_LOCAL6,
    METADATA,
    PRIVATE,
    RESOLVER,
    RESOLVER6,
    RESOLVER_LOOPBACK,
    RSYNC_PORT,
    SPECIAL4,
    SPECIAL6,
    SPIRE_PORT,
    SSH_PORT,
    STRANGER,
    ULA6,
)

OTHER_JOB_PORT = 7000
HOST_PORTS = (API_PORT, RSYNC_PORT, SSH_PORT, SPIRE_PORT, OTHER_JOB_PORT)
# Where job containers come from, and in which network mode. "api" jobs are real jobs
# started by the laptop through the API (network_mode slirp4netns, Podman's rootless
# default and the only one the dev host can offer). The others are containers started
# directly with the API's flags in modes the API must not offer, to show the owner rule
# holds there too: allow_host_loopback opens slirp's 10.0.2.2 -> host loopback path, and
# `host` gives the container the host's network namespace. "subuid" is what an escaped
# process gets from the job user's Podman: a `host` container running as `--user 1`,
# whose sockets carry one of the job user's subordinate uids, not the job uid.
MODES = (
    "api:slirp4netns",
    "podman:slirp4netns:allow_host_loopback=true",
    "podman:host",
    "subuid:host",
)

TARGETS = [
    *((addr, port) for addr in HOST_ADDRESSES for port in HOST_PORTS),
    (LAPTOP_TUNNEL, LAPTOP_PORT),
    (LAPTOP_ROUTED, LAPTOP_PORT),
    (INTERNET, INTERNET_PORT),
    (GATEWAY, INTERNET_PORT),
    (STRANGER, INTERNET_PORT),
    (METADATA, INTERNET_PORT),
    *((addr, INTERNET_PORT) for addr in PRIVATE),
    *((addr, INTERNET_PORT) for addr in SPECIAL4),
]


@pytest.fixture(scope="module", params=MODES)
def from_job(request, jobs, api_jobs, subordinate_jobs, services):
    """What a job container reached, with another job listening on OTHER_JOB_PORT."""
    source, mode = request.param.split(":", 1)
    runner = {"api": api_jobs, "podman": jobs, "subuid": subordinate_jobs}[source]
    other = runner.start(
        f"while true; do echo other-job | nc -l -p {OTHER_JOB_PORT}; done", network=mode
    )
    # The other job really listens, so the deny below is the firewall's: it answers
    # itself (with its own network namespace) or root on the host (with `host`).
    if mode == "host":
        got = services.probe("host", [("127.0.0.1", OTHER_JOB_PORT)])
        assert got[f"127.0.0.1 {OTHER_JOB_PORT}"]["banner"] == "other-job", got
    else:
        assert "other-job" in runner.exec(other, f"nc -w 3 127.0.0.1 {OTHER_JOB_PORT} </dev/null")
    dns = [("flashpods.test", s) for s in (RESOLVER, METADATA, PRIVATE[0], INTERNET)]
    results = container_probe(runner, TARGETS, network=mode, dns=dns)
    if source == "api":
        runner.kill(other)
    return results


def test_subuid_mode_really_runs_as_a_subordinate_uid(subordinate_jobs, services):
    """The `subuid` mode above tests what it claims: its processes carry a subordinate
    uid of the job user on the host, not the job uid the owner rule used to match."""
    name = subordinate_jobs.start("sleep 60", network="host")
    try:
        top = services.podman("top", name, "huser", check=True).stdout.split()
    finally:
        services.podman("rm", "-f", "-t", "0", name, check=False)
    uids = {int(u) for u in top[1:]}
    ranges = subordinate_ids(Account.named(JOB_USER))
    assert uids and all(any(a <= u <= b for a, b in ranges) for u in uids), (uids, ranges)


def _reached(results: dict, targets) -> list[str]:
    """Targets the job reached; a refusal that was not immediate counts as reached too
    (the firewall must reject, so that a job fails fast instead of hanging)."""
    bad = []
    for a, p in targets:
        got = results[f"{a} {p}"]
        if got["reached"] or "timed out" in got["line"]:
            bad.append(f"{a} {p}: {got['line']}")
    return bad


def test_V3_api_and_rsync_unreachable_except_from_laptop_over_wireguard(services):
    t = services
    from_stranger = t.probe(
        "stranger",
        [(HOST_TUNNEL, API_PORT), (HOST_TUNNEL, RSYNC_PORT), (HOST_PUBLIC, API_PORT),
         (HOST_PUBLIC, RSYNC_PORT), (HOST_PUBLIC, SSH_PORT)],
    )  # fmt: skip
    # The stranger is on the host's link (sshd answers it) but never gets the API or rsync,
    # not even by sending to the tunnel address over the public link.
    assert from_stranger[f"{HOST_PUBLIC} {SSH_PORT}"]["reached"]
    for key in (f"{HOST_TUNNEL} {API_PORT}", f"{HOST_TUNNEL} {RSYNC_PORT}",
                f"{HOST_PUBLIC} {API_PORT}", f"{HOST_PUBLIC} {RSYNC_PORT}"):  # fmt: skip
        assert not from_stranger[key]["reached"], (key, from_stranger[key])
        assert from_stranger[key]["seconds"] < 1, "refused at once, not dropped"
    # The laptop outside the tunnel (its public address) is a stranger too.
    laptop_public = t.probe("laptop", [(HOST_PUBLIC, API_PORT)])
    assert not laptop_public[f"{HOST_PUBLIC} {API_PORT}"]["reached"]
    # Matching allow: through the tunnel the laptop reaches both.
    through_tunnel = t.probe("laptop", [(HOST_TUNNEL, API_PORT), (HOST_TUNNEL, RSYNC_PORT)])
    assert all(r["reached"] for r in through_tunnel.values()), through_tunnel


def test_V5_job_container_cannot_reach_api(from_job, services):
    assert _reached(from_job, [(a, API_PORT) for a in HOST_ADDRESSES]) == []
    got = services.probe("laptop", [(HOST_TUNNEL, API_PORT)])
    assert got[f"{HOST_TUNNEL} {API_PORT}"]["reached"]


def test_V5_V6_host_processes_reach_api_and_rsync_locally_but_the_job_uid_does_not(services):
    """The host's own processes (health checks) may use the tunnel address locally; the
    job uid, whose slirp4netns traffic arrives the same way, may not."""
    targets = [(HOST_TUNNEL, API_PORT), (HOST_TUNNEL, RSYNC_PORT)]
    assert all(r["reached"] for r in services.probe("host", targets).values())
    as_job = services.probe("host", targets, user="flashpods")
    assert not any(r["reached"] for r in as_job.values()), as_job


def test_V6_job_container_cannot_reach_rsync(from_job, services):
    assert _reached(from_job, [(a, RSYNC_PORT) for a in HOST_ADDRESSES]) == []
    got = services.probe("laptop", [(HOST_TUNNEL, RSYNC_PORT)])
    assert got[f"{HOST_TUNNEL} {RSYNC_PORT}"]["reached"]


def test_V7_job_container_reaches_the_internet(from_job):
    line = from_job[f"{INTERNET} {INTERNET_PORT}"]["line"]
    assert line == f"internet {INTERNET} {INTERNET_PORT}", from_job[f"{INTERNET} {INTERNET_PORT}"]
    # Other public hosts too, the host's own link neighbours included.
    assert from_job[f"{STRANGER} {INTERNET_PORT}"]["reached"]


def test_V18_job_container_cannot_reach_the_laptop(from_job, services):
    assert _reached(from_job, [(LAPTOP_TUNNEL, LAPTOP_PORT), (LAPTOP_ROUTED, LAPTOP_PORT)]) == []
    # Matching allow: the host's own (non-job) processes still reach the laptop through
    # the tunnel, so the tunnel and the laptop's server are up.
    from_host = services.probe("host", [(LAPTOP_TUNNEL, LAPTOP_PORT), (LAPTOP_ROUTED, LAPTOP_PORT)])
    assert all(r["reached"] for r in from_host.values()), from_host


def test_V20_job_container_reaches_nothing_but_the_public_internet(from_job, services):
    others = [(a, p) for a in HOST_ADDRESSES for p in (SSH_PORT, SPIRE_PORT, OTHER_JOB_PORT)]
    assert _reached(from_job, others) == [], "host ports (sshd, SPIRE server, another job)"
    assert _reached(from_job, [(METADATA, INTERNET_PORT)]) == [], "cloud metadata service"
    assert _reached(from_job, [(a, INTERNET_PORT) for a in PRIVATE]) == [], "private ranges"
    assert _reached(from_job, [(a, INTERNET_PORT) for a in SPECIAL4]) == [], "special ranges"
    # The resolver it needs still answers, and so does a public one; DNS servers on the
    # metadata or a private address do not (UDP is refused like TCP).
    assert "203.0.113.10" in from_job[f"dns {RESOLVER}"]["line"], from_job[f"dns {RESOLVER}"]
    assert "203.0.113.10" in from_job[f"dns {INTERNET}"]["line"], from_job[f"dns {INTERNET}"]
    for server in (METADATA, PRIVATE[0]):
        assert "203.0.113.10" not in from_job[f"dns {server}"]["line"], from_job[f"dns {server}"]
    # Matching allow: the same listeners answer a process that is not a job.
    from_root = services.probe(
        "host", [(HOST_PUBLIC, SSH_PORT), ("127.0.0.1", SPIRE_PORT), (METADATA, INTERNET_PORT),
                 (PRIVATE[0], INTERNET_PORT)]
    )  # fmt: skip
    assert all(r["reached"] for r in from_root.values()), from_root


ESCAPED_DENIED = [
    *((addr, port) for addr in (*HOST_ADDRESSES, HOST_PUBLIC6, "::1") for port in HOST_PORTS[:4]),
    (LAPTOP_TUNNEL, LAPTOP_PORT),
    (LAPTOP_ROUTED, LAPTOP_PORT),
    (METADATA, INTERNET_PORT),
    *((addr, INTERNET_PORT) for addr in (*PRIVATE, *SPECIAL4, *SPECIAL6)),
    (ULA6, INTERNET_PORT),
    (f"{LINK_LOCAL6}%eth0", INTERNET_PORT),
    # An IPv4-mapped destination leaves as IPv4 and meets the IPv4 rules.
    (f"::ffff:{METADATA}", INTERNET_PORT),
    # NAT64 and 6to4 addresses of the metadata service and a private neighbour.
    *((addr, INTERNET_PORT) for addr in EMBEDDED6_NONPUBLIC),
]


def _escaped_identities() -> dict[str, str | int]:
    """Who an escaped process can be on the host: the job uid, and through the job
    user's Podman (`--user N`) or newuidmap any of its subordinate uids; both ends of
    each range are tried."""
    ranges = subordinate_ids(Account.named(JOB_USER))
    assert ranges, f"{JOB_USER} has no subordinate uids: run scripts/lib/users.sh"
    found: dict[str, str | int] = {"job uid": JOB_USER}
    for first, last in ranges:
        found[f"subordinate uid {first}"] = first
        found[f"subordinate uid {last}"] = last
    return found


@pytest.mark.parametrize("who", list(_escaped_identities()))
def test_V5_V6_V18_V20_job_uid_outside_any_container(services, who):
    """A process that escapes a container lands on the host as the job uid, or as one of
    its subordinate uids: same limits, over IPv4 and IPv6."""
    targets = [*ESCAPED_DENIED, (INTERNET, INTERNET_PORT), (INTERNET6, INTERNET_PORT),
               *((a, INTERNET_PORT) for a in EMBEDDED6_PUBLIC),
               (RESOLVER, "dns"), (RESOLVER_LOOPBACK, "dns"), (RESOLVER6, "dns"),
               (INTERNET, "dns"), (METADATA, "dns"), (PRIVATE[0], "dns")]  # fmt: skip
    got = services.probe("host", targets, user=_escaped_identities()[who])
    # Matching allow: root reaches the special-range and link-local listeners.
    special = [
        (a, INTERNET_PORT)
        for a in (*SPECIAL4, *SPECIAL6, *EMBEDDED6_NONPUBLIC, f"{LINK_LOCAL6}%eth0")
    ]
    as_root = services.probe("host", special)
    assert all(r["reached"] for r in as_root.values()), as_root
    reached = [k for k, _ in [(f"{a} {p}", 0) for a, p in ESCAPED_DENIED] if got[k]["reached"]]
    assert reached == []
    slow = [k for k, r in got.items() if "seconds" in r and r["seconds"] > 1]
    assert slow == [], "refusals must be immediate (reject, not drop)"
    assert got[f"{INTERNET} {INTERNET_PORT}"]["banner"].startswith("internet")
    assert got[f"{INTERNET6} {INTERNET_PORT}"]["banner"].startswith("internet")
    # An IPv6-only host keeps public IPv4 through NAT64 (and 6to4).
    for addr in EMBEDDED6_PUBLIC:
        key = f"{addr} {INTERNET_PORT}"
        assert got[key]["banner"].startswith("internet"), got[key]
    assert got[f"{RESOLVER} dns"]["address"] == "203.0.113.10", got[f"{RESOLVER} dns"]
    assert got[f"{RESOLVER_LOOPBACK} dns"]["address"] == "203.0.113.10"
    assert got[f"{RESOLVER6} dns"]["address"] == "203.0.113.10", got[f"{RESOLVER6} dns"]
    assert got[f"{INTERNET} dns"]["address"] == "203.0.113.10"
    for server in (METADATA, PRIVATE[0]):
        assert not got[f"{server} dns"]["answered"], got[f"{server} dns"]
