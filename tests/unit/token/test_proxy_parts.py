"""The credential proxy's pure parts: its config rules, placeholders, the egress rule
read from the firewall template (the real template; the kernel answers "is it local")."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import base_config
from flashpods_token.config import ConfigError, parse_config
from flashpods_token.egress import Egress, EgressRefused, nonpublic_networks
from flashpods_token.http_chunks import ChunkDecoder
from flashpods_token.placeholder import find, placeholder
from flashpods_token.usage import ResponseUsage, UsageBook

TEMPLATE = Path(__file__).resolve().parents[3] / "modules" / "flashpods" / "firewall.nft.in"


def _proxy(**extra) -> dict:
    return {"socket": "/run/x/proxy.sock", "ca_dir": "/var/x", "firewall_template": "/t"} | extra


# (config patch, what the error must say). env_delivery is dropped by each case.
CONFIG_CASES = [
    ({}, "secret ANTHROPIC_API_KEY has no host rule"),  # neither rule nor opt-in
    ({"env_delivery": ["NOPE"]}, "env_delivery names 'NOPE'"),
    ({"proxy": _proxy(rules={"GITHUB_TOKEN": ["github.com"]}),
      "env_delivery": ["GITHUB_TOKEN", "ANTHROPIC_API_KEY"]}, "both proxy.rules and env_delivery"),
    ({"proxy": _proxy(rules={"GITHUB_TOKEN": ["not a host"]})}, "is not a host name"),
    ({"proxy": _proxy(rules={"GITHUB_TOKEN": []})}, "must list host names"),
    ({"proxy": _proxy(socket="/run/x/other.sock")}, "must be named proxy.sock"),
    ({"proxy": _proxy(sockt="/x")}, "unknown key 'sockt'"),
    ({"proxy": {"socket": "/run/x/proxy.sock"}}, "missing key 'ca_dir'"),
    ({"proxy": _proxy(refused_interfaces="wg0")}, "refused_interfaces must list interface"),
    ({"proxy": _proxy(refused_interfaces=["a/b"])}, "refused_interfaces must list interface"),
    ({"proxy": _proxy(budget_dir="/b")}, "budget_dir needs proxy.usage_dir"),
    ({"proxy": _proxy(usage_dir="/u", budget_dir="b")}, "budget_dir must be an absolute path"),
]  # fmt: skip


@pytest.mark.parametrize(("patch", "message"), CONFIG_CASES)
def test_config_errors_name_what_to_change(tmp_path, secret_files, podman, patch, message):
    cfg = base_config(tmp_path, secret_files, podman, spire={"bundle_file": "/b"})
    del cfg["env_delivery"]
    cfg.update(patch)
    with pytest.raises(ConfigError, match=message):
        parse_config(cfg)


def test_every_secret_with_a_rule_or_an_opt_in_loads(tmp_path, secret_files, podman):
    cfg = base_config(tmp_path, secret_files, podman, spire={"bundle_file": "/b"})
    cfg["proxy"] = _proxy(rules={"GITHUB_TOKEN": ["GitHub.com", "api.github.com"]})
    cfg["env_delivery"] = ["ANTHROPIC_API_KEY"]
    parsed = parse_config(cfg)
    assert parsed.proxy.rules == {"GITHUB_TOKEN": ["github.com", "api.github.com"]}
    assert parsed.env_delivery == ["ANTHROPIC_API_KEY"]


def test_placeholders_are_found_in_header_values():
    value = f"token {placeholder('GITHUB_TOKEN', 'job_abcdefghijkl')}"
    (found,) = find(value)
    assert (found.name, found.job_id) == ("GITHUB_TOKEN", "job_abcdefghijkl")
    assert find("x-access-token:fpph.GITHUB_TOKEN.job_x")[0].job_id == "job_x"
    assert find("fpph.lower.job_x") == []


# (destination, refused). The firewall's sets, NAT64/6to4 forms, mapped IPv4, the host.
EGRESS_CASES = [
    ("169.254.169.254", True), ("10.0.0.1", True), ("192.168.1.1", True),
    ("100.64.0.1", True), ("127.0.0.1", True), ("64:ff9b::a9fe:a9fe", True),
    ("2002:a9fe:a9fe::1", True), ("::ffff:10.0.0.1", True), ("fd00::1", True),
    ("fe80::1", True), ("224.0.0.1", True), ("::1", True),
    ("203.0.113.10", False), ("8.8.8.8", False), ("64:ff9b::808:808", False),
    ("2606:4700::1111", False),
]  # fmt: skip


@pytest.mark.parametrize(("address", "refused"), EGRESS_CASES)
def test_egress_follows_the_firewall_template(address, refused):
    egress = Egress(nonpublic_networks(TEMPLATE.read_text()))
    assert (egress.refusal(ipaddress.ip_address(address)) is not None) == refused


def test_a_name_pinned_to_a_private_address_is_still_refused():
    egress = Egress(nonpublic_networks(TEMPLATE.read_text()), {"github.com": "10.1.2.3"})
    with pytest.raises(EgressRefused, match="10.1.2.3 is in 10.0.0.0/8"):
        egress.resolve("github.com", 443)
    with pytest.raises(EgressRefused, match="not a host name"):
        egress.resolve("evil.com\r\nX: y", 443)


ROUTED = """
import ipaddress, sys
from flashpods_token.egress import Egress, route_interface
egress = Egress([], refused_interfaces=["fptun0"])
print(route_interface(ipaddress.ip_address("192.0.2.10")))
print(egress.refusal(ipaddress.ip_address("192.0.2.10")))
print(egress.refusal(ipaddress.ip_address("198.51.100.7")))
print(route_interface(ipaddress.ip_address("198.51.100.7")))
"""


def test_an_address_routed_into_a_refused_interface_is_refused():
    # A namespace of its own (unshare): a tunnel-like interface that carries a public
    # address, as the laptop's WireGuard interface carries its routed addresses.
    setup = " && ".join(
        [f"ip link add {a} type veth peer name {b} && ip link set {a} up && ip link set {b} up"
         for a, b in (("fptun0", "fptun1"), ("fpeth0", "fpeth1"))]
        + ["ip route add 192.0.2.10/32 dev fptun0", "ip addr add 198.51.100.1/24 dev fpeth0"]
    )  # fmt: skip
    done = subprocess.run(
        ["unshare", "-rn", "sh", "-c", f'{setup} && exec "$0" -c "$1"', sys.executable, ROUTED],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    via, refused, allowed, other = done.stdout.splitlines()
    assert via == "fptun0"
    assert refused == "192.0.2.10 is routed into fptun0, which jobs may not use"
    assert (allowed, other) == ("None", "fpeth0")


def _chunked(parts: list[bytes]) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


def test_streamed_usage_is_read_across_chunk_and_line_boundaries():
    events = (
        b'event: message_start\ndata: {"type":"message_start","message":{"usage":'
        b'{"input_tokens":12,"cache_read_input_tokens":3,"output_tokens":1}}}\n\n'
        b'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":7}}\n\n'
        b'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":9}}\n\n'
    )
    raw = _chunked([events[i : i + 5] for i in range(0, len(events), 5)])
    decoder, meter = ChunkDecoder(), ResponseUsage("text/event-stream; charset=utf-8")
    for i in range(0, len(raw), 3):  # the wire delivers any split
        meter.feed(decoder.feed(raw[i : i + 3]))
    assert decoder.done
    assert meter.finish() == {"input_tokens": 12, "cache_read_input_tokens": 3, "output_tokens": 9}


def test_a_json_answer_and_hostile_values_are_read_safely():
    meter = ResponseUsage("application/json")
    meter.feed(b'{"usage": {"input_tokens": 5, "output_tokens": -4, "x": true}}')
    assert meter.finish() == {"input_tokens": 5}
    with pytest.raises(ValueError):
        ChunkDecoder().feed(b"zz\r\n")


def test_the_budget_clamps_reserves_and_then_refuses(tmp_path):
    book = UsageBook(str(tmp_path / "usage"), budget_tokens=100)
    first = book.reserve("job_a", 64)
    second = book.reserve("job_a", 64)  # concurrent: only what the first left over
    assert (first, second) == (64, 36)
    book.settle("job_a", first, {"input_tokens": 10, "output_tokens": 64})
    book.release("job_a", second)
    assert book.reserve("job_a", None) == 26
    book.settle("job_a", 26, {"input_tokens": 10, "output_tokens": 16})
    assert book.reserve("job_a", 5) == 0 and book.get("job_a").budget_exhausted
    # A restarted proxy goes on from the file.
    assert UsageBook(str(tmp_path / "usage"), 100).get("job_a").used == 100
    with pytest.raises(ValueError):
        book.reserve("../etc", 1)
