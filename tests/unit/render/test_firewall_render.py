"""The shared nftables template renders to a ruleset nft accepts and loads atomically."""

import re
import subprocess
import uuid

import pytest
from flashpods_devhost.render import (
    RenderError,
    check_firewall,
    fill,
    load_firewall,
    render_firewall,
    unload_firewall,
)

VALUES = dict(
    wg_if="wg0",
    laptop_addr="10.0.0.2",
    api_port=8080,
    rsync_port=873,
    job_uid=1001,
    job_subuids=[(100000, 165535)],
    resolvers=["10.255.255.53", "127.0.0.53"],
)


def test_every_placeholder_is_filled():
    text = render_firewall(**VALUES)
    assert re.search(r"@[A-Z0-9_]+@", text) is None
    assert 'iifname "wg0" ip saddr 10.0.0.2 tcp dport { 8080, 873 } accept' in text
    # The job uid and its subordinate uids are one set, used by both the marking rule
    # and the job rule.
    assert "elements = { 1001, 100000-165535 }" in text
    assert "meta skuid != @job_uids fib daddr type local" in text
    assert "meta skuid @job_uids ct state" in text
    assert "skuid 1001" not in text and "skuid != 1001" not in text
    assert "elements = { 10.255.255.53, 127.0.0.53 }" in text


@pytest.mark.root  # nft -c in a new network namespace
@pytest.mark.parametrize(
    "resolvers",
    [
        ["10.255.255.53", "127.0.0.53"],  # the dev host topology and systemd-resolved
        [],  # no resolver: the sets stay empty, still valid nft
        ["2001:db8::53", "192.0.2.53"],  # mixed families land in their own sets
    ],
)
def test_nft_accepts_the_rendered_ruleset(resolvers):
    check_firewall(render_firewall(**{**VALUES, "resolvers": resolvers}))


@pytest.mark.root  # nft -c in a new network namespace
def test_nft_accepts_several_subordinate_ranges_and_a_single_uid():
    subuids = [(300000, 300000), (100000, 165535), (2**32 - 2, 2**32 - 2)]
    text = render_firewall(**{**VALUES, "job_subuids": subuids})
    assert "elements = { 1001, 100000-165535, 300000, 4294967294 }" in text
    check_firewall(text)


@pytest.mark.root  # nft -c in a new network namespace
def test_nft_check_reports_a_broken_ruleset():
    with pytest.raises(RenderError, match="checking the flashpods table failed"):
        check_firewall("table inet flashpods { chain c { nonsense } }\n")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("wg_if", "wg0; drop", "wg_if must be an interface name"),
        ("wg_if", "a-very-long-interface-name", "wg_if must be an interface name"),
        ("laptop_addr", "laptop", "laptop_addr must be an IP address"),
        ("laptop_addr", "fd00::2", "laptop_addr must be an IPv4 address"),
        ("api_port", 0, "api_port must be a port number"),
        ("rsync_port", "873", "rsync_port must be a port number"),
        ("job_uid", -1, "job_uid must be a numeric id"),
        ("job_uid", "flashpods", "job_uid must be a numeric id"),
        ("job_subuids", [], "job_subuids is empty"),
        ("job_subuids", "100000-165535", "job_subuids must be a list"),
        ("job_subuids", [(165535, 100000)], "first <= last"),
        ("job_subuids", [(0, 65535)], "1 <= first"),
        ("job_subuids", [(100000, 2**32 - 1)], "last <= 4294967294"),
        ("job_subuids", [(100000, "165535")], "uid pairs"),
        ("job_subuids", [(100000, 165535), (165535, 200000)], "overlap"),
        ("job_subuids", [(1000, 2000)], "holds the job uid 1001"),
        ("resolvers", "10.0.0.53", "resolvers must be a list"),
        ("resolvers", ["dns.example"], "resolvers must be an IP address"),
    ],
)
def test_bad_values_are_refused_with_a_reason(key, value, message):
    with pytest.raises(RenderError, match=message):
        render_firewall(**{**VALUES, key: value})


def test_missing_and_unknown_values_are_named():
    with pytest.raises(RenderError, match="needs values for B"):
        fill("@A@ @B@", {"A": "1"})
    with pytest.raises(RenderError, match="no placeholder for C"):
        fill("@A@", {"A": "1", "C": "2"})
    with pytest.raises(RenderError, match="one line"):
        fill("@A@", {"A": "1\n2"})


@pytest.fixture
def netns():
    name = f"fp-render-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=True)


def _tables(netns):
    out = subprocess.run(
        ["nsenter", f"--net=/run/netns/{netns}", "nft", "list", "tables"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.split("\n")


@pytest.mark.root  # nft in a network namespace
def test_load_is_atomic_repeatable_and_leaves_other_tables_alone(netns):
    # Another table (netavark's, the NixOS firewall's) must survive every load.
    subprocess.run(
        [
            "nsenter",
            f"--net=/run/netns/{netns}",
            "nft",
            "add",
            "table",
            "inet",
            "other",
        ],
        check=True,
    )
    text = render_firewall(**VALUES)
    load_firewall(text, netns=netns)
    load_firewall(render_firewall(**{**VALUES, "api_port": 9090}), netns=netns)
    ruleset = subprocess.run(
        [
            "nsenter",
            f"--net=/run/netns/{netns}",
            "nft",
            "list",
            "table",
            "inet",
            "flashpods",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # The second load replaced the first in full: no stale 8080 rule is left.
    assert "9090" in ruleset and "8080" not in ruleset
    assert "table inet other" in _tables(netns)
    unload_firewall(netns=netns)
    unload_firewall(netns=netns)  # absent table: still fine
    assert _tables(netns) == ["table inet other", ""]


@pytest.mark.root  # nft in a network namespace
def test_load_failure_names_nft_error(netns):
    with pytest.raises(RenderError, match="loading the flashpods table failed"):
        load_firewall("table inet flashpods { chain c { nonsense } }\n", netns=netns)
    assert "table inet flashpods" not in _tables(netns)


def test_netns_must_be_a_plain_name():
    with pytest.raises(RenderError, match="netns must be a name"):
        load_firewall("", netns="../etc")
