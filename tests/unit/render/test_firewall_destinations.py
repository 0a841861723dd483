"""The job's forbidden-destination sets: IPv6 prefixes that embed IPv4 follow the IPv4 set.

The NAT64 (64:ff9b::/96) and 6to4 (2002::/16) elements of job_nonpublic_v6 are written
out by hand in the template (the NixOS module renders it with plain string replacement,
so nothing computes them at render time); these tests recompute them from
job_nonpublic_v4 so the two sets cannot drift, and ask the kernel's own set lookup, in a
throwaway network namespace, which addresses a job is refused.
"""

import ipaddress
import re
import subprocess
import uuid

import pytest
from flashpods_devhost.render import FIREWALL_TEMPLATE, load_firewall, render_firewall, template_dir

VALUES = dict(
    wg_if="wg0",
    laptop_addr="10.0.0.2",
    api_port=8080,
    rsync_port=873,
    job_uid=1001,
    job_subuids=[(100000, 165535)],
    resolvers=[],
)
NAT64 = ipaddress.ip_network("64:ff9b::/96")
SIX_TO_FOUR = ipaddress.ip_network("2002::/16")


def _set_elements(name: str) -> list:
    text = (template_dir() / FIREWALL_TEMPLATE).read_text()
    body = re.search(rf"set {name} \{{(.*?)\n\t\}}", text, flags=re.S)
    assert body, f"no set {name} in {FIREWALL_TEMPLATE}"
    return [
        ipaddress.ip_network(m)
        for m in re.findall(r"^\s*([0-9a-f:.]+/\d+),", body.group(1), flags=re.M)
    ]


def _embedded(v4: ipaddress.IPv4Network, prefix: ipaddress.IPv6Network, shift: int):
    """v4 placed `shift` bits from the right inside prefix (RFC 6052 and RFC 3056)."""
    address = int(prefix.network_address) | (int(v4.network_address) << shift)
    return ipaddress.IPv6Network((address, 128 - shift - (32 - v4.prefixlen)))


def test_nat64_and_6to4_elements_are_exactly_the_embedded_nonpublic_ipv4_ranges():
    v4 = _set_elements("job_nonpublic_v4")
    v6 = _set_elements("job_nonpublic_v6")
    assert len(v4) >= 10, v4
    nat64 = {n for n in v6 if n.subnet_of(NAT64)}
    six_to_four = {n for n in v6 if n.subnet_of(SIX_TO_FOUR)}
    assert nat64 == {_embedded(n, NAT64, 0) for n in v4}
    assert six_to_four == {_embedded(n, SIX_TO_FOUR, 80) for n in v4}
    # Neither prefix is refused whole: IPv6-only hosts reach public IPv4 through them.
    assert NAT64 not in v6 and SIX_TO_FOUR not in v6


# (destination, refused to a job). Public IPv4 inside NAT64/6to4 stays reachable.
CASES = [
    ("64:ff9b::a9fe:a9fe", True),  # 169.254.169.254, the metadata service, via NAT64
    ("64:ff9b::a00:1", True),  # 10.0.0.1, the tunnel address
    ("64:ff9b::c0a8:6301", True),  # 192.168.99.1
    ("64:ff9b::ac1f:ffff", True),  # 172.31.255.255, the last of 172.16.0.0/12
    ("64:ff9b::6440:1", True),  # 100.64.0.1, carrier-grade NAT
    ("64:ff9b::7f00:1", True),  # 127.0.0.1
    ("64:ff9b::808:808", False),  # 8.8.8.8
    ("64:ff9b::cb00:710a", False),  # 203.0.113.10, the test topology's internet
    ("64:ff9b::ac20:1", False),  # 172.32.0.1, just past 172.16.0.0/12
    ("64:ff9b::a9ff:1", False),  # 169.255.0.1, just past link-local
    ("2002:a9fe:a9fe::1", True),  # 6to4 of the metadata service
    ("2002:a00:1::1", True),  # 6to4 of 10.0.0.1
    ("2002:c0a8:6301:1::1", True),  # 6to4 of 192.168.99.1, any subnet behind it
    ("2002:808:808::1", False),  # 6to4 of 8.8.8.8
    ("2002:cb00:710a::1", False),  # 6to4 of 203.0.113.10
    ("::a9fe:a9fe", True),  # IPv4-compatible (deprecated): sit0 tunnels it
    ("::1", True),
    ("64:ff9b:1::cb00:710a", True),  # local-use NAT64: refused whole
    ("2001:db8:203::10", False),  # plain public IPv6
]


@pytest.fixture
def loaded_netns():
    name = f"fp-dest-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        load_firewall(render_firewall(**VALUES), netns=name)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=True)


@pytest.mark.root  # nft in a network namespace
def test_the_loaded_set_refuses_embedded_nonpublic_ipv4_only(loaded_netns):
    wrong = []
    for address, refused in CASES:
        lookup = subprocess.run(
            ["nsenter", f"--net=/run/netns/{loaded_netns}", "nft", "get", "element", "inet",
             "flashpods", "job_nonpublic_v6", f"{{ {address} }}"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if (lookup.returncode == 0) != refused:
            wrong.append(f"{address}: in set = {lookup.returncode == 0}, want {refused}")
    assert wrong == []
