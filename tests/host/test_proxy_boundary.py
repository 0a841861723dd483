"""V5-V7, V18, V20 again, through the credential proxy; and who may use its socket.

The proxy (services/token/flashpods_token/proxy.py) opens upstream connections as its
own user, which the nftables job rules never see, so it applies the jobs' egress rule
itself (egress.py). Each attack of test_network_boundary.py is made again from a real
API job through the proxy, in both of its wire shapes: CONNECT through flashpods-init's
relay (what every HTTPS_PROXY client sends), CONNECT to a host with a secret's rule (the
proxy terminates TLS and opens the upstream itself), and TLS straight onto the mounted
socket with `curl --unix-socket` (SNI names a host the proxy resolves: names pinned to
each address, as a hostile DNS answer would). Every one must come back as the proxy's
own refusal (403 `egress_refused`, naming the address) and no packet of the proxy's
user may leave for it: an nftables set in the host's namespace records the address and
port of every packet the proxy's user sends. Matching allows in the same run: the
public internet through each shape, and those packets in the record.
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess

import pytest
from host_settings import (
    AGENT_IMAGE,
    PROXY_INTERNET_NAME,
    PROXY_RULED,
    PROXY_RULED_INTERNET,
    PROXY_TARGET_NAMES,
)
from topology import (
    API_PORT,
    EMBEDDED6_NONPUBLIC,
    EMBEDDED6_PUBLIC,
    GATEWAY,
    HERE,
    HOST_ADDRESSES,
    HOST_PUBLIC,
    INTERNET,
    INTERNET6,
    INTERNET_PORT,
    LAPTOP_PORT,
    LAPTOP_ROUTED,
    LAPTOP_TUNNEL,
    LINK_LOCAL6,
    METADATA,
    PRIVATE,
    PYTHON,
    RSYNC_PORT,
    SPECIAL4,
    SPECIAL6,
    SPIRE_PORT,
    SSH_PORT,
    STRANGER,
    ULA6,
)

pytestmark = [pytest.mark.root, pytest.mark.slow]

JOB_CODE = (HERE / "proxy_job.py").read_text()
OTHER_JOB_PORT = 7000  # as in test_network_boundary.py: nothing may reach another job

# What a job may not reach, by row, as CONNECT targets (address, port).
V5 = [(a, API_PORT) for a in HOST_ADDRESSES]
V6 = [(a, RSYNC_PORT) for a in HOST_ADDRESSES]
V18 = [(LAPTOP_TUNNEL, LAPTOP_PORT), (LAPTOP_ROUTED, LAPTOP_PORT)]
V20 = [
    *((a, p) for a in HOST_ADDRESSES for p in (SSH_PORT, SPIRE_PORT, OTHER_JOB_PORT)),
    (METADATA, INTERNET_PORT),
    *((a, INTERNET_PORT) for a in (*PRIVATE, *SPECIAL4, *SPECIAL6, ULA6)),
    (f"{LINK_LOCAL6}%eth0", INTERNET_PORT),
    (f"::ffff:{METADATA}", INTERNET_PORT),
    *((a, INTERNET_PORT) for a in EMBEDDED6_NONPUBLIC),
]
# The matching allows: the public internet, IPv4, IPv6 and through NAT64/6to4.
V7 = [(INTERNET, INTERNET_PORT), (STRANGER, INTERNET_PORT), (INTERNET6, INTERNET_PORT),
      *((a, INTERNET_PORT) for a in EMBEDDED6_PUBLIC)]  # fmt: skip
DENIED_NAMES = {"V5": ["api.test", "public.test", "loopback.test", "resolver.test", "slirp.test"],
                "V18": ["laptop.test", "laptop-routed.test"],
                "V20": ["metadata.test", "private.test", "special.test", "ula.test",
                        "nat64-metadata.test"]}  # fmt: skip
assert sorted(n for names in DENIED_NAMES.values() for n in names) == sorted(PROXY_TARGET_NAMES)


def _key(addr: str, port: int) -> tuple[str, int]:
    """A destination as the kernel records it (no scope id, IPv4-mapped as IPv4)."""
    ip = ipaddress.ip_address(addr.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return str(ip), int(port)


class SentRecord:
    """An nftables table in the host's namespace recording (address, port) of every
    TCP or UDP packet a uid sends (a dynamic set per family, filled from the output hook)."""

    def __init__(self, topology, uid: int) -> None:
        self.ns = topology.ns["host"]
        self.table = f"fp{topology.tag}_proxy_sent"
        self._nft(
            f"""table inet {self.table} {{
  set sent4 {{ type ipv4_addr . inet_service; flags dynamic; size 65535; }}
  set sent6 {{ type ipv6_addr . inet_service; flags dynamic; size 65535; }}
  chain out {{
    type filter hook output priority -400; policy accept;
    meta skuid {uid} meta l4proto {{ tcp, udp }} meta nfproto ipv4 \
      add @sent4 {{ ip daddr . th dport }}
    meta skuid {uid} meta l4proto {{ tcp, udp }} meta nfproto ipv6 \
      add @sent6 {{ ip6 daddr . th dport }}
  }}
}}
"""
        )

    def _nft(self, script: str) -> str:
        argv = ["nsenter", f"--net=/run/netns/{self.ns}", "--", "nft", "-f", "-"]
        done = subprocess.run(argv, input=script, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def sent(self) -> set[tuple[str, int]]:
        found: set[tuple[str, int]] = set()
        for name in ("sent4", "sent6"):
            argv = ["nsenter", f"--net=/run/netns/{self.ns}", "--", "nft", "-j", "list", "set",
                    "inet", self.table, name]  # fmt: skip
            done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True)
            for item in json.loads(done.stdout)["nftables"]:
                for elem in item.get("set", {}).get("elem", []):
                    if "elem" in elem:  # an element with its own attributes
                        elem = elem["elem"]["val"]
                    addr, port = elem["concat"]
                    found.add(_key(addr, port))
        return found

    def close(self) -> None:
        self._nft(f"delete table inet {self.table}\n")


@pytest.fixture(scope="module")
def sent_by_proxy(topology, devhost):
    record = SentRecord(topology, devhost.accounts.token.uid)
    try:
        yield record
    finally:
        record.close()


def _job_command(targets: dict) -> str:
    return (
        f"cat > /tmp/proxy_job.py <<'PY'\n{JOB_CODE}PY\n"
        f"python3 /tmp/proxy_job.py '{json.dumps(targets)}'"
    )


@pytest.fixture(scope="module")
def through_proxy(api_jobs, sent_by_proxy):
    """What one API job got through the proxy, and what the proxy's user sent meanwhile."""
    targets = {
        "connect": [*V5, *V6, *V18, *V20, *V7],
        "connect_tls": [*((n, 443) for n in PROXY_RULED), (PROXY_RULED_INTERNET, 443)],
        "tls": [*PROXY_TARGET_NAMES, PROXY_INTERNET_NAME],
    }
    job_id = api_jobs.submit(_job_command(targets), image=AGENT_IMAGE)
    job = api_jobs.wait(job_id, timeout=240)
    log = api_jobs.logs(job_id)
    found = re.search(r"^RESULT (.*)$", log, flags=re.M)
    assert job["status"] == "succeeded" and found, log[-4000:]
    return json.loads(found.group(1)), sent_by_proxy.sent()


def _not_refused(results: dict, keys: list[str]) -> list[str]:
    """Targets that did not get the proxy's egress refusal naming the address."""
    bad = []
    for key in keys:
        got = results[key]
        if got["status"] != 403 or got["code"] != "egress_refused" or not got["message"]:
            bad.append(f"{key}: {got}")
    return bad


def _connect_keys(targets) -> list[str]:
    return [f"connect {a} {p}" for a, p in targets]


def _packets_to(sent: set, targets) -> list[tuple[str, int]]:
    return sorted(_key(a, p) for a, p in targets if _key(a, p) in sent)


def _pinned(names) -> list[tuple[str, int]]:
    pins = {**PROXY_TARGET_NAMES, **PROXY_RULED}
    return [(pins[n], 443) for n in names]


def test_V5_V6_proxy_refuses_the_api_and_rsync(through_proxy):
    results, sent = through_proxy
    assert _not_refused(results, _connect_keys([*V5, *V6])) == []
    names = DENIED_NAMES["V5"]
    assert _not_refused(results, [f"tls {n}" for n in names]) == []
    assert _not_refused(results, [f"connect ruled-{n} 443" for n in names]) == []
    assert _packets_to(sent, [*V5, *V6, *_pinned(names)]) == []
    # The message says which address and why, so the job can tell what to change.
    assert "address of the host itself" in results[f"connect {HOST_PUBLIC} {API_PORT}"]["message"]


def test_V7_proxy_reaches_the_internet(through_proxy):
    results, sent = through_proxy
    for addr, port in V7:
        got = results[f"connect {addr} {port}"]
        assert got["status"] == 200 and got["banner"].startswith(("internet", "stranger")), got
    # TLS straight onto the socket, and an intercepted host with a rule: the proxy
    # verified the stand-in's certificate and brought its answer back.
    got = results[f"tls {PROXY_INTERNET_NAME}"]
    assert got["status"] == 200 and got["banner"] == f"tls-internet {INTERNET} 443", got
    got = results[f"connect {PROXY_RULED_INTERNET} 443"]
    assert got["banner"] == f"200 tls-internet {INTERNET} 443", got
    # The record sees the proxy's packets: the deny checks are not blind.
    assert {_key(a, p) for a, p in V7} | {(INTERNET, 443)} <= sent, sent


def test_V18_proxy_refuses_the_laptop(through_proxy):
    results, sent = through_proxy
    assert _not_refused(results, _connect_keys(V18)) == []
    names = DENIED_NAMES["V18"]
    assert _not_refused(results, [f"tls {n}" for n in names]) == []
    assert _not_refused(results, [f"connect ruled-{n} 443" for n in names]) == []
    assert _packets_to(sent, [*V18, *_pinned(names)]) == []
    # 192.0.2.10 is a public-looking address the host routes into the tunnel: refused for
    # its route (the firewall's `oifname wg goto job_refuse`), not for its range.
    assert "routed into" in results[f"connect {LAPTOP_ROUTED} {LAPTOP_PORT}"]["message"]


def test_V20_proxy_refuses_everything_but_the_public_internet(through_proxy):
    results, sent = through_proxy
    assert _not_refused(results, _connect_keys(V20)) == []
    names = DENIED_NAMES["V20"]
    assert _not_refused(results, [f"tls {n}" for n in names]) == []
    assert _not_refused(results, [f"connect ruled-{n} 443" for n in names]) == []
    assert _packets_to(sent, [*V20, *_pinned(names)]) == []


# -- who may use the socket at all ----------------------------------------------------

CALLER = r"""
import json, socket, sys
try:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(sys.argv[1])
    s.sendall(b"CONNECT %s HTTP/1.1\r\nHost: x\r\n\r\n" % sys.argv[2].encode())
    data = b""
    while chunk := s.recv(4096):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    code = [l.split(b":", 1)[1].strip().decode() for l in head.split(b"\r\n")
            if l.lower().startswith(b"x-flashpods-proxy:")]
    print(json.dumps({"status": int(head.split(b" ")[1]), "code": code[0] if code else "",
                      "banner": body.decode(errors="replace")[:200]}))
except OSError as exc:
    print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
"""


def _call(topology, socket_path: str, target: str, user: str | None = None) -> dict:
    argv = [PYTHON, "-c", CALLER, socket_path, target]
    if user is not None:
        argv = ["runuser", "-u", user, "--", *argv]
    return json.loads(topology.sh("host", *argv).stdout)


def test_only_jobs_use_the_proxy_and_only_through_the_mounted_socket(
    topology, devhost, api_jobs, sent_by_proxy
):
    sock = devhost.proxy_socket
    target = f"{GATEWAY}:{INTERNET_PORT}"  # the router's banner: used by no other row
    # Socket and directory: the sandbox group only (the job uid is in it, others not).
    st = sock.stat()
    assert st.st_gid == devhost.accounts.sandbox_gid
    assert st.st_mode & 0o007 == 0, oct(st.st_mode)
    # A user outside the group cannot even connect.
    assert _call(topology, str(sock), target, user="nobody")["error"] == "PermissionError"
    # Users that may connect but are no running job are refused by attestation: root,
    # the API's user, and the job uid itself outside a container (an escaped process).
    for user in (None, devhost.accounts.api.name, devhost.accounts.podman.name):
        got = _call(topology, str(sock), target, user=user)
        assert got.get("status") == 403 and got["code"] == "unauthenticated", (user, got)
    # A container of the job user that is no job, with the socket's directory mounted the
    # way the API mounts it: no running job behind it, refused the same way.
    mount = f"{sock.parent}:/run/flashpods:ro"
    stray = devhost.podman(
        "run", "--rm", "--userns=keep-id", "-v", mount, AGENT_IMAGE,
        "python3", "-c", CALLER, "/run/flashpods/proxy.sock", target,
    )  # fmt: skip
    got = json.loads(stray.stdout.strip().splitlines()[-1])
    assert got.get("status") == 403 and got["code"] == "unauthenticated", (stray.stderr, got)
    assert _key(GATEWAY, INTERNET_PORT) not in sent_by_proxy.sent()
    # Matching allow: a job, through the socket mounted at /run/flashpods.
    script = (
        f"cat > /tmp/c.py <<'PY'\n{CALLER}PY\npython3 /tmp/c.py /run/flashpods/proxy.sock {target}"
    )
    job_id = api_jobs.submit(script, image=AGENT_IMAGE)
    api_jobs.wait(job_id)
    got = json.loads(api_jobs.logs(job_id).strip().splitlines()[-1])
    assert got.get("status") == 200 and got["banner"].startswith("internet"), got
    # The proxy offers nothing but that socket: no TCP or UDP listener of its own.
    pid = devhost._services["proxy"].pid
    listening = topology.sh("host", "ss", "-H", "-ltunp").stdout
    assert f"pid={pid}," not in listening, listening
