"""A host, a laptop, a stranger and "the internet" in network namespaces.

    laptop  198.51.100.2 ─┐                      ┌─ internet 198.51.100.254 (router)
      wg 10.0.0.2 ════════╪══ WireGuard (UDP) ═══╪═ host wg 10.0.0.1     203.0.113.10, metadata
      192.0.2.10 (routed  │      bridge "lan"    │  host 198.51.100.1    169.254.169.254, private
      through the tunnel) │                      │  resolver 10.255.255.53 and 127.0.0.53
    stranger 198.51.100.3 ┘                      └─ IPv6: 2001:db8:100::/64 (link),
                                                    2001:db8:203::10 (internet), fd99::1 (ULA),
                                                    NAT64 64:ff9b::/96 and 6to4 2002::/16
                                                    addresses embedding IPv4 ones

Everything lives in namespaces this module creates and deletes: no packet of a test
leaves them. The documentation ranges 198.51.100.0/24, 203.0.113.0/24 and 2001:db8::/32
play the public internet, so the firewall's "public unicast only" rule lets the
stand-in internet through for the right reason. WireGuard is wireguard-go with a
distinct interface name per side and per run (its control socket directory
/run/wireguard is shared by every network namespace).
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
PYTHON = "/usr/bin/python3"  # readable by the job uid (the venv under /root may not be)

HOST_TUNNEL = "10.0.0.1"
LAPTOP_TUNNEL = "10.0.0.2"
LAPTOP_ROUTED = "192.0.2.10"  # a laptop address the host routes into the tunnel
HOST_PUBLIC = "198.51.100.1"
HOST_PUBLIC6 = "2001:db8:100::1"
LAPTOP_PUBLIC = "198.51.100.2"
STRANGER = "198.51.100.3"
GATEWAY = "198.51.100.254"
GATEWAY6 = "2001:db8:100::254"
INTERNET = "203.0.113.10"
INTERNET6 = "2001:db8:203::10"
METADATA = "169.254.169.254"
PRIVATE = ("192.168.99.1", "172.16.99.1", "10.99.0.1", "100.64.0.1")
ULA6 = "fd99::1"
# Special-purpose ranges the router also answers on: benchmarking, IETF protocol
# assignments; IPv6 discard-only and local-use NAT64.
SPECIAL4 = ("198.18.0.1", "192.0.0.1")
SPECIAL6 = ("100::1", "64:ff9b:1::1")
LINK_LOCAL6 = "fe80::254"
# IPv6 addresses that embed an IPv4 one: the well-known NAT64 prefix 64:ff9b::/96 and
# 6to4 2002::/16. The router answers on them as a provider's NAT64 gateway or a 6to4
# relay would forward them to the embedded IPv4 address: the metadata service and a
# private neighbour must be refused, a public address (the internet's) allowed.
EMBEDDED6_NONPUBLIC = (
    "64:ff9b::a9fe:a9fe",  # 169.254.169.254
    "64:ff9b::c0a8:6301",  # 192.168.99.1
    "2002:a9fe:a9fe::1",  # 169.254.169.254
    "2002:c0a8:6301::1",  # 192.168.99.1
)
EMBEDDED6_PUBLIC = ("64:ff9b::cb00:710a", "2002:cb00:710a::1")  # 203.0.113.10
RESOLVER = "10.255.255.53"
RESOLVER_LOOPBACK = "127.0.0.53"
RESOLVER6 = "fd53::53"  # a ULA resolver: reachable only through the resolver rule
SLIRP_GATEWAY = "10.0.2.2"  # slirp4netns' address for the host's loopback

WG_PORT = 51820
API_PORT = 8080
RSYNC_PORT = 873
SSH_PORT = 22
SPIRE_PORT = 8081
INTERNET_PORT = 80
LAPTOP_PORT = 8000

# Every address the host has, as seen from a job: where "cannot reach the host" is tried.
HOST_ADDRESSES = (HOST_TUNNEL, HOST_PUBLIC, "127.0.0.1", SLIRP_GATEWAY, RESOLVER)

JOB_USER = "flashpods"
_job = pwd.getpwnam(JOB_USER)
PODMAN_ENV = {
    "HOME": _job.pw_dir,
    "XDG_RUNTIME_DIR": f"/run/user/{_job.pw_uid}",
    "PATH": "/usr/bin:/bin",
}


def run(
    argv: list[str], check: bool = True, timeout: float = 60, **kw
) -> subprocess.CompletedProcess:
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, check=False, **kw
    )
    if check and result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}"
        )
    return result


@dataclass
class Topology:
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    processes: list[subprocess.Popen] = field(default_factory=list)
    created: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.ns = {
            role: f"fp{self.tag}-{role}" for role in ("host", "laptop", "stranger", "inet", "lan")
        }
        self.wg_host = f"fw{self.tag}h"
        self.wg_laptop = f"fw{self.tag}l"
        self.keys = Path(tempfile.mkdtemp(prefix=f"fp{self.tag}-wg-"))

    # ---- running things inside --------------------------------------------------------

    def nsenter(self, role: str) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.ns[role]}", "--"]

    def sh(self, role: str, *argv: str, check: bool = True, timeout: float = 60):
        return run([*self.nsenter(role), *argv], check=check, timeout=timeout)

    def ip(self, role: str, *args: str) -> None:
        run(["ip", "-n", self.ns[role], *args])

    def spawn(self, role: str, argv: list[str], ready: str | None = "ready") -> subprocess.Popen:
        proc = subprocess.Popen(
            [*self.nsenter(role), *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.processes.append(proc)
        if ready is not None:
            line = proc.stdout.readline().strip()
            if line != ready:
                proc.kill()
                raise RuntimeError(f"{argv} did not start: {line} {proc.stderr.read()}")
        return proc

    def standin(self, role: str, *args: str) -> subprocess.Popen:
        return self.spawn(role, [PYTHON, str(HERE / "standin.py"), *args])

    def probe(
        self, role: str, targets: list[tuple[str, int]], user: str | int | None = None
    ) -> dict:
        """Connect to each (address, port) from a process in `role`; {"addr port": result}.

        With user=flashpods this is a process of the job uid outside any container: what
        a container escape, or rootless `--network=host`, would be. A number is a bare
        uid without a passwd entry (a subordinate uid), run with that gid too.
        """
        argv = [PYTHON, str(HERE / "probe.py"), json.dumps(targets)]
        if isinstance(user, int):
            ids = ["--reuid", str(user), "--regid", str(user), "--clear-groups"]
            argv = ["setpriv", *ids, "--", *argv]
        elif user is not None:
            argv = ["runuser", "-u", user, "--", *argv]
        out = self.sh(role, *argv, timeout=120).stdout
        return json.loads(out)

    def podman(self, *args: str, timeout: float = 120, check: bool = True):
        """Rootless podman as the job user, inside the host namespace."""
        env = [f"{k}={v}" for k, v in PODMAN_ENV.items()]
        argv = ["runuser", "-u", JOB_USER, "--", "env", "-i", *env, "podman", *args]
        return self.sh("host", *argv, timeout=timeout, check=check)

    # ---- building ---------------------------------------------------------------------

    def up(self) -> Topology:
        for name in self.ns.values():
            run(["ip", "netns", "add", name])
            self.created.append(name)
            run(["ip", "-n", name, "link", "set", "lo", "up"])
        self._public_link()
        self._addresses()
        self._wireguard()
        self._standins()
        return self

    def _public_link(self) -> None:
        self.ip("lan", "link", "add", "br0", "type", "bridge")
        self.ip("lan", "link", "set", "br0", "up")
        for role, port in (("host", "h0"), ("laptop", "l0"), ("stranger", "s0"), ("inet", "i0")):
            self.ip(
                "lan",
                "link",
                "add",
                port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                self.ns[role],
            )
            self.ip("lan", "link", "set", port, "master", "br0", "up")
            self.ip(role, "link", "set", "eth0", "up")

    def _addresses(self) -> None:
        add = {
            "host": [f"{HOST_PUBLIC}/24", f"{HOST_PUBLIC6}/64"],
            "laptop": [f"{LAPTOP_PUBLIC}/24"],
            "stranger": [f"{STRANGER}/24", "2001:db8:100::3/64"],
            "inet": [f"{GATEWAY}/24", f"{GATEWAY6}/64"],
        }
        for role, addrs in add.items():
            for addr in addrs:
                self.ip(role, "addr", "add", addr, "dev", "eth0", "nodad")
        # The host has a default route to the internet router, like a rented box.
        self.ip("host", "route", "add", "default", "via", GATEWAY)
        self.ip("host", "-6", "route", "add", "default", "via", GATEWAY6)
        self.ip("host", "addr", "add", f"{RESOLVER}/32", "dev", "lo")
        self.ip("host", "addr", "add", f"{RESOLVER6}/128", "dev", "lo", "nodad")
        # The router holds the internet, the metadata service and private neighbours.
        for addr in (f"{INTERNET}/24", f"{METADATA}/32", *(f"{p}/32" for p in PRIVATE)):
            self.ip("inet", "addr", "add", addr, "dev", "lo")
        embedded = (*SPECIAL6, *EMBEDDED6_NONPUBLIC, *EMBEDDED6_PUBLIC)
        for addr in (f"{INTERNET6}/64", f"{ULA6}/64", *(f"{a}/128" for a in embedded)):
            self.ip("inet", "addr", "add", addr, "dev", "lo", "nodad")
        for addr in SPECIAL4:
            self.ip("inet", "addr", "add", f"{addr}/32", "dev", "lo")
        # A link-local neighbour on the public link (IPv6 link-local needs no route).
        self.ip("inet", "addr", "add", f"{LINK_LOCAL6}/64", "dev", "eth0", "nodad")
        # The stranger tries the tunnel address through the public link (Linux hosts
        # accept a packet for any of their addresses on any interface).
        self.ip("stranger", "route", "add", "10.0.0.0/24", "via", HOST_PUBLIC)

    def _wireguard(self) -> None:
        os.chmod(self.keys, 0o700)
        pub = {}
        for side in ("host", "laptop"):
            key = run(["wg", "genkey"]).stdout.strip()
            (self.keys / side).write_text(key + "\n")
            pub[side] = run(["wg", "pubkey"], input=key).stdout.strip()
        for role, ifname in (("host", self.wg_host), ("laptop", self.wg_laptop)):
            # Foreground (-f): the process is ours to stop; never WG_PROCESS_FOREGROUND=0.
            self.spawn(role, ["wireguard-go", "-f", ifname], ready=None)
            sock = Path(f"/run/wireguard/{ifname}.sock")
            deadline = time.monotonic() + 10
            while not sock.exists():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"wireguard-go did not create {sock}")
                time.sleep(0.02)
        self.sh(
            "host", "wg", "set", self.wg_host, "private-key", str(self.keys / "host"),
            "listen-port", str(WG_PORT), "peer", pub["laptop"],
            "allowed-ips", f"{LAPTOP_TUNNEL}/32,{LAPTOP_ROUTED}/32",
        )  # fmt: skip
        self.sh(
            "laptop", "wg", "set", self.wg_laptop, "private-key", str(self.keys / "laptop"),
            "peer", pub["host"], "endpoint", f"{HOST_PUBLIC}:{WG_PORT}",
            "allowed-ips", "10.0.0.0/24", "persistent-keepalive", "1",
        )  # fmt: skip
        self.ip("host", "addr", "add", f"{HOST_TUNNEL}/24", "dev", self.wg_host)
        self.ip("host", "link", "set", self.wg_host, "up")
        self.ip("host", "route", "add", f"{LAPTOP_ROUTED}/32", "dev", self.wg_host)
        self.ip("laptop", "addr", "add", f"{LAPTOP_TUNNEL}/24", "dev", self.wg_laptop)
        self.ip("laptop", "link", "set", self.wg_laptop, "up")
        self.ip("laptop", "addr", "add", f"{LAPTOP_ROUTED}/32", "dev", "lo")

    def _standins(self) -> None:
        # What a real host runs that no job may reach: sshd and the SPIRE server.
        self.standin("host", "tcp", "sshd", str(SSH_PORT))
        self.standin("host", "tcp", "spire-server", str(SPIRE_PORT))
        self.standin("host", "dns", RESOLVER, RESOLVER_LOOPBACK, RESOLVER6)
        # A web server on the laptop, on its tunnel addresses only.
        self.standin(
            "laptop",
            "tcp",
            "laptop",
            str(LAPTOP_PORT),
            "--bind",
            LAPTOP_TUNNEL,
            "--bind",
            LAPTOP_ROUTED,
        )
        self.standin("inet", "tcp", "internet", str(INTERNET_PORT))
        # DNS servers a job must not use (metadata, private) and one it may (public).
        self.standin("inet", "dns", METADATA, PRIVATE[0], INTERNET)
        self.standin("stranger", "tcp", "stranger", str(INTERNET_PORT))

    # ---- tearing down -----------------------------------------------------------------

    def down(self) -> None:
        errors = []
        for proc in reversed(self.processes):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, 15)
                    proc.wait(timeout=5)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, 9)
                    proc.wait(timeout=5)
            for stream in (proc.stdout, proc.stderr):
                if stream:
                    stream.close()
        for name in reversed(self.created):
            result = run(["ip", "netns", "delete", name], check=False)
            if result.returncode != 0:
                errors.append(result.stderr.strip())
        self.created.clear()
        for ifname in (self.wg_host, self.wg_laptop):
            Path(f"/run/wireguard/{ifname}.sock").unlink(missing_ok=True)
        shutil.rmtree(self.keys, ignore_errors=True)
        if errors:
            print("topology teardown: " + "; ".join(errors), file=sys.stderr)
