"""The proxy's upstream connections held to the jobs' egress rules.

The proxy's sockets are not the job uid's, so the nftables allow-list never sees them:
the same rule is applied here. The forbidden ranges are read from the firewall
template's own sets (`job_nonpublic_v4`, `job_nonpublic_v6`, NAT64 and 6to4 forms of
private IPv4 included), so there is one list. Addresses local to the host are refused
too (the firewall's `fib daddr type unicast`): the kernel says which, by letting a
bind to them succeed. So are addresses the host routes out of a refused interface (the
firewall's `oifname "wg0" goto job_refuse`: the laptop's tunnel carries public-looking
addresses too): the kernel's own route lookup (netlink RTM_GETROUTE) says which.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import socket
import struct
from collections.abc import Iterable

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9-]{1,63})*\.?$"
)


class EgressRefused(Exception):
    """The destination is one a job may not reach; the message names it."""


def nonpublic_networks(template_text: str) -> list[IpNetwork]:
    """The elements of job_nonpublic_v4 and job_nonpublic_v6 in the firewall template."""
    networks: list[IpNetwork] = []
    for name in ("job_nonpublic_v4", "job_nonpublic_v6"):
        body = re.search(rf"set {name} \{{(.*?)\n\t\}}", template_text, flags=re.S)
        if body is None:
            raise ValueError(f"the firewall template has no set {name}")
        found = re.findall(r"^\s*([0-9a-f:.]+/\d+),", body.group(1), flags=re.M)
        if not found:
            raise ValueError(f"the firewall template's set {name} is empty")
        networks += [ipaddress.ip_network(n) for n in found]
    return networks


def check_hostname(host: str) -> str:
    """A DNS name or an IP literal, lower-cased; anything else is refused."""
    host = host.strip().lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    with contextlib.suppress(ValueError):
        return str(ipaddress.ip_address(host))
    if not _HOSTNAME_RE.match(host):
        raise EgressRefused(f"{host[:80]!r} is not a host name")
    return host.rstrip(".")


def is_host_local(address: IpAddress) -> bool:
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((str(address), 0))
        except OSError:
            return False
    return True


# rtnetlink (linux/rtnetlink.h): ask the kernel which interface a destination leaves by.
_RTM_NEWROUTE, _RTM_GETROUTE, _NLMSG_ERROR, _NLM_F_REQUEST = 24, 26, 2, 1
_RTA_DST, _RTA_OIF = 1, 4


def route_interface(address: IpAddress) -> str | None:
    """The interface the host would send to address by (`ip route get`), None if unrouted."""
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    dst = address.packed
    # struct rtmsg (family, dst_len, src_len, tos, table, protocol, scope, type, flags)
    body = struct.pack("=BBBBBBBBI", family, len(dst) * 8, 0, 0, 0, 0, 0, 0, 0)
    body += struct.pack("=HH", 4 + len(dst), _RTA_DST) + dst
    request = struct.pack("=IHHII", 16 + len(body), _RTM_GETROUTE, _NLM_F_REQUEST, 1, 0) + body
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as nl:
        nl.settimeout(2.0)
        nl.send(request)
        reply = nl.recv(65536)
    length, kind = struct.unpack_from("=IH", reply)
    if kind == _NLMSG_ERROR:
        return None  # no route: the connect fails on its own
    if kind != _RTM_NEWROUTE:
        raise OSError(f"unexpected netlink answer {kind} to a route lookup")
    offset = 16 + 12  # nlmsghdr, rtmsg
    while offset + 4 <= min(length, len(reply)):
        attr_len, attr_type = struct.unpack_from("=HH", reply, offset)
        if attr_len < 4:
            break
        if attr_type == _RTA_OIF:
            (index,) = struct.unpack_from("=I", reply, offset + 4)
            return socket.if_indextoname(index)
        offset += (attr_len + 3) & ~3
    return None


class Egress:
    def __init__(
        self,
        forbidden: Iterable[IpNetwork],
        static_hosts: dict[str, str] | None = None,
        connect_timeout_s: float = 10.0,
        refused_interfaces: Iterable[str] = (),
    ):
        self._forbidden = list(forbidden)
        self._static = {k.lower(): v for k, v in (static_hosts or {}).items()}
        self._timeout = connect_timeout_s
        self._refused_interfaces = frozenset(refused_interfaces)

    def refusal(self, address: IpAddress) -> str | None:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        for net in self._forbidden:
            if address.version == net.version and address in net:
                return f"{address} is in {net}, which jobs may not reach"
        if address.is_multicast or address.is_unspecified:
            return f"{address} is not a unicast address"
        if is_host_local(address):
            return f"{address} is an address of the host itself"
        if self._refused_interfaces:
            try:
                via = route_interface(address)
            except OSError as exc:  # cannot tell where it would go: do not send it
                return f"{address}: the route lookup failed ({exc})"
            if via in self._refused_interfaces:
                return f"{address} is routed into {via}, which jobs may not use"
        return None

    def resolve(self, host: str, port: int) -> list[IpAddress]:
        """The addresses of host that a job may reach; EgressRefused if none."""
        host = check_hostname(host)
        if not 1 <= port <= 65535:
            raise EgressRefused(f"port {port} is out of range")
        literal = self._static.get(host, host)
        try:
            candidates = [ipaddress.ip_address(literal)]
        except ValueError:
            try:
                infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except socket.gaierror as exc:
                raise EgressRefused(f"cannot resolve {host}: {exc.strerror}") from None
            candidates = list(dict.fromkeys(ipaddress.ip_address(i[4][0]) for i in infos))
        allowed, reasons = [], []
        for address in candidates:
            reason = self.refusal(address)
            if reason is None:
                allowed.append(address)
            else:
                reasons.append(reason)
        if not allowed:
            raise EgressRefused(f"{host}: " + "; ".join(reasons))
        return allowed

    def connect(self, host: str, port: int) -> socket.socket:
        """A TCP connection to an address of host that was checked (no second lookup)."""
        last: OSError | None = None
        for address in self.resolve(host, port):
            family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.settimeout(self._timeout)
            try:
                sock.connect((str(address), port))
            except OSError as exc:
                sock.close()
                last = exc
                continue
            sock.settimeout(None)
            return sock
        raise OSError(f"cannot connect to {host}:{port}: {last}")
