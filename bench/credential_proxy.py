"""P7: what the credential proxy costs a job, against nginx as the origin (issue 15).

Two network namespaces of the benchmark's own: `host` (the dev host and its proxy) and
`inet` (nginx on 203.0.113.10:443 with a test CA, serving a static Messages API stream
for POST /v1/messages and a 64 MiB file). The client is curl, run in the PID namespace
of one API-started job as the job uid (what the proxy attests, as P6 does), in the
host's namespace:

- direct (the bare tool): curl to nginx, TLS end to end, holding the real key;
- through the proxy: `curl --unix-socket proxy.sock` (TLS straight onto the socket, the
  shape a job's tools use without the relay), holding only the placeholder; the proxy
  attests the connection, terminates TLS with its own leaf, puts the key in, opens its
  own TLS connection to nginx (the host has a rule, so it is intercepted: the
  expensive path) and, for the Messages API call, reads the usage from the stream.

Each sample is a new connection on both sides (curl's time_starttransfer: connect,
handshakes, request, first byte), alternating direct and proxied. The relay inside the
container (one more local splice) is not in these figures.

    python -m bench.credential_proxy [--smoke]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .common import Api, Result, bench_host, ms, percentile

NGINX = "/usr/sbin/nginx"
MODEL_HOST = "api.anthropic.com"
DOWNLOAD_HOST = "github.com"
HOST_ADDR, ROUTER_ADDR, ORIGIN_ADDR = "198.51.100.1", "198.51.100.254", "203.0.113.10"
DOWNLOAD_BYTES = 64 << 20
MIB = 1 << 20
TTFB_ADDED_TARGET_S = 0.005  # issue 15: the proxy adds at most 5 ms to the first byte
DOWNLOAD_TARGET_MIBS = 200.0  # and a 64 MiB download runs at >= 200 MiB/s through it
CLONE_NEWNET = 0x40000000
# A short streamed Messages API answer, with the usage the proxy reads.
SSE_BODY = "".join(
    f"event: {kind}\ndata: {json.dumps(data)}\n\n"
    for kind, data in (
        ("message_start", {"type": "message_start", "message": {
            "id": "msg_bench", "type": "message", "role": "assistant", "model": "bench",
            "content": [], "usage": {"input_tokens": 12, "output_tokens": 1}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": "hello"}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                           "usage": {"output_tokens": 5}}),
        ("message_stop", {"type": "message_stop"}),
    )
)  # fmt: skip
REQUEST_BODY = json.dumps(
    {"model": "bench", "max_tokens": 64, "stream": True,
     "messages": [{"role": "user", "content": "hi"}]}
)  # fmt: skip

T = TypeVar("T")


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")


@contextlib.contextmanager
def _namespaces() -> Iterator[tuple[str, str]]:
    """(host, inet): two namespaces joined by a veth; 203.0.113.10 on inet's loopback."""
    tag = secrets.token_hex(3)
    host, inet = f"fpb{tag}-h", f"fpb{tag}-i"
    made: list[str] = []
    try:
        for name in (host, inet):
            _ip("netns", "add", name)
            made.append(name)
            _ip("-n", name, "link", "set", "lo", "up")
        _ip("-n", host, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0",
            "netns", inet)  # fmt: skip
        for name, addr in ((host, HOST_ADDR), (inet, ROUTER_ADDR)):
            _ip("-n", name, "addr", "add", f"{addr}/24", "dev", "eth0")
            _ip("-n", name, "link", "set", "eth0", "up")
        _ip("-n", inet, "addr", "add", f"{ORIGIN_ADDR}/32", "dev", "lo")
        _ip("-n", host, "route", "add", "default", "via", ROUTER_ADDR)
        yield host, inet
    finally:
        for name in reversed(made):
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=30)


def _in_netns(netns: str, fn: Callable[[], T]) -> T:
    """fn() on a thread that joined the namespace (its children are born there too)."""

    def join() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        with open(f"/run/netns/{netns}", "rb") as ns:
            if libc.setns(ns.fileno(), CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns({netns}) failed: run as root")

    with ThreadPoolExecutor(1, initializer=join) as pool:
        return pool.submit(fn).result()


def _origin_tls(directory: Path) -> tuple[Path, Path, Path]:
    """(CA certificate, leaf chain, leaf key) of the stand-in origin's own test CA."""
    now = datetime.datetime.now(datetime.UTC)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def cert(subject: str, key: Any, issuer: x509.Name, signer: Any, ca: bool) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), True)
        )
        if not ca:
            sans = [x509.DNSName(MODEL_HOST), x509.DNSName(DOWNLOAD_HOST)]
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), False)
        return builder.sign(signer, hashes.SHA256())

    ca_key, leaf_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    ca = cert("P7 origin CA", ca_key, name("P7 origin CA"), ca_key, ca=True)
    leaf = cert(MODEL_HOST, leaf_key, ca.subject, ca_key, ca=False)
    pem = serialization.Encoding.PEM
    files = (directory / "origin-ca.pem", directory / "origin.pem", directory / "origin-key.pem")
    files[0].write_bytes(ca.public_bytes(pem))
    files[1].write_bytes(leaf.public_bytes(pem) + ca.public_bytes(pem))
    files[2].write_bytes(
        leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    for path in files:
        path.chmod(0o644)
    return files


def _nginx_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


@contextlib.contextmanager
def _nginx(inet: str, work: Path, chain: Path, key: Path) -> Iterator[None]:
    """nginx in the inet namespace: one worker, TLS on 203.0.113.10:443."""
    if not Path(NGINX).exists():
        raise RuntimeError(
            f"{NGINX} is missing: FLASHPODS_SETUP_TEST_TOOLS=1 bash scripts/lib/packages.sh"
        )
    (work / "64m.bin").write_bytes(os.urandom(DOWNLOAD_BYTES))
    temp = work / "nginx-temp"
    temp.mkdir()
    paths = " ".join(
        f"{kind}_temp_path {temp / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf = f"""
daemon off;
master_process off;
worker_processes 1;
pid {work / "nginx.pid"};
error_log {work / "nginx-error.log"} warn;
events {{ worker_connections 256; }}
http {{
    # Which connections resumed a TLS session ("r"): the proxy's upstream ones should.
    log_format resumed "$ssl_session_reused";
    access_log {work / "access.log"} resumed;
    {paths}
    sendfile on;
    server {{
        listen {ORIGIN_ADDR}:443 ssl;
        ssl_certificate {chain};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        location = /v1/messages {{
            default_type text/event-stream;
            return 200 {_nginx_string(SSE_BODY)};
        }}
        location = /64m {{
            default_type application/octet-stream;
            alias {work / "64m.bin"};
        }}
    }}
}}
"""
    (work / "nginx.conf").write_text(conf)
    argv = ["nsenter", f"--net=/run/netns/{inet}", "--", NGINX, "-p", str(work),
            "-e", str(work / "nginx-error.log"), "-c", str(work / "nginx.conf")]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while True:
            listening = subprocess.run(
                ["nsenter", f"--net=/run/netns/{inet}", "--", "ss", "-Hltn"],
                capture_output=True, text=True, timeout=10,
            ).stdout  # fmt: skip
            if f"{ORIGIN_ADDR}:443" in listening:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise RuntimeError(f"nginx did not start: {err}")
            time.sleep(0.05)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class JobCurl:
    """curl in one job's PID namespace as the job uid, direct or through the proxy."""

    def __init__(self, host: Any, pid: str, work: Path, job_id: str, keys: dict) -> None:
        uid = str(host.accounts.podman.uid)
        self.prefix = ["nsenter", "-t", pid, "--pid", "-S", uid, "-G", uid, "--", "curl", "-sS"]
        self.proxy_socket = str(host.proxy_socket)
        self.origin_ca = str(work / "origin-ca.pem")
        self.proxy_ca = str(work / "proxy-ca.pem")
        self.keys = keys
        self.job_id = job_id

    def _where(self, via_proxy: bool, host: str) -> list[str]:
        if via_proxy:
            return ["--unix-socket", self.proxy_socket, "--cacert", self.proxy_ca]
        return ["--resolve", f"{host}:443:{ORIGIN_ADDR}", "--cacert", self.origin_ca]

    def _key(self, name: str, via_proxy: bool) -> str:
        # The bare tool holds the key; a job holds only its placeholder.
        return f"fpph.{name}.{self.job_id}" if via_proxy else self.keys[name]

    def _run(self, argv: list[str]) -> list[str]:
        done = subprocess.run(self.prefix + argv, capture_output=True, text=True, timeout=120)
        fields = done.stdout.split()
        if done.returncode != 0 or not fields or fields[0] != "200":
            raise RuntimeError(f"curl {argv[-1]} failed: {done.stdout[-300:]} {done.stderr[-500:]}")
        return fields

    def first_byte(self, via_proxy: bool) -> tuple[float, float]:
        """Seconds from the start to the first byte of a streamed Messages API answer, and
        to the end of the TLS handshake (with nginx, or with the proxy)."""
        key = self._key("ANTHROPIC_API_KEY", via_proxy)
        argv = [*self._where(via_proxy, MODEL_HOST), "-o", "/dev/null",
                "-w", "%{http_code} %{time_starttransfer} %{time_appconnect}", "-X", "POST",
                "-H", "content-type: application/json", "-H", f"x-api-key: {key}",
                "-H", "anthropic-version: 2023-06-01", "--data", REQUEST_BODY,
                f"https://{MODEL_HOST}/v1/messages"]  # fmt: skip
        fields = self._run(argv)
        return float(fields[1]), float(fields[2])

    def download(self, via_proxy: bool) -> float:
        """MiB/s of the 64 MiB download, new connection included."""
        key = self._key("GITHUB_TOKEN", via_proxy)
        argv = [*self._where(via_proxy, DOWNLOAD_HOST), "-o", "/dev/null",
                "-w", "%{http_code} %{size_download} %{time_total}",
                "-H", f"Authorization: token {key}", f"https://{DOWNLOAD_HOST}/64m"]  # fmt: skip
        _, size, total = self._run(argv)
        if int(size) != DOWNLOAD_BYTES:
            raise RuntimeError(f"download got {size} bytes, not {DOWNLOAD_BYTES}")
        return DOWNLOAD_BYTES / float(total) / MIB


def _measure(host_ns: str, work: Path, samples: int, rounds: int) -> dict[str, Any]:
    keys = {
        "ANTHROPIC_API_KEY": "sk-ant-api03-" + secrets.token_hex(24),
        "GITHUB_TOKEN": "ghp_" + secrets.token_hex(18),
    }
    proxy = {
        "rules": {"ANTHROPIC_API_KEY": [MODEL_HOST], "GITHUB_TOKEN": [DOWNLOAD_HOST]},
        "static_hosts": {MODEL_HOST: ORIGIN_ADDR, DOWNLOAD_HOST: ORIGIN_ADDR},
        "upstream_ca_file": str(work / "origin-ca.pem"),
    }
    with bench_host(
        netns=host_ns,
        secrets=keys,
        roles={"worker": sorted(keys), "sub_agent": []},
        token_overrides={"proxy": proxy},
    ) as host:
        api = Api(host)
        job_id = api.post_job("sleep 3600")["id"]
        api.wait_status(job_id, {"running"})
        pid = host.podman("inspect", "--format", "{{.State.Pid}}", job_id).stdout.strip()
        shutil.copy(host.paths.token_state / "proxy-ca" / "ca.pem", work / "proxy-ca.pem")
        (work / "proxy-ca.pem").chmod(0o644)
        curl = JobCurl(host, pid, work, job_id, keys)
        proxy_pid = host._services["proxy"].pid
        assert proxy_pid is not None
        # Warm-up on both sides: the proxy's leaf contexts and the job's liveness cache.
        for via in (False, True):
            curl.first_byte(via)
        direct_ttfb, proxy_ttfb, handshakes = [], [], []
        cpu_before = _cpu_s(proxy_pid)
        for _ in range(samples):
            direct_ttfb.append(curl.first_byte(False)[0])
            first, handshake = curl.first_byte(True)
            proxy_ttfb.append(first)
            handshakes.append(handshake)
        call_cpu = (_cpu_s(proxy_pid) - cpu_before) / samples
        direct_mibs, proxy_mibs, cpu = [], [], []
        for _ in range(rounds):
            direct_mibs.append(curl.download(False))
            before = _cpu_s(proxy_pid)
            proxy_mibs.append(curl.download(True))
            cpu.append(_cpu_s(proxy_pid) - before)
        usage = host.paths.usage / f"{job_id}.json"
        recorded = usage.exists()
        log = "" if recorded else host.log("proxy", 20)
        api.kill(job_id)
    return {
        "direct_ttfb": direct_ttfb,
        "proxy_ttfb": proxy_ttfb,
        "proxy_handshake": handshakes,
        "proxy_cpu_per_call_s": call_cpu,
        "direct_mibs": direct_mibs,
        "proxy_mibs": proxy_mibs,
        "proxy_cpu_s": cpu,
        "usage_recorded": recorded,
        "proxy_log": log,
    }


def proxy_cost(smoke: bool) -> list[Result]:
    samples, rounds = (5, 1) if smoke else (60, 7)
    with (
        tempfile.TemporaryDirectory(prefix="fp-bench-p7-", dir="/var/tmp") as tmp,
        _namespaces() as (host_ns, inet_ns),
    ):
        work = Path(tmp)
        work.chmod(0o755)  # the proxy's user reads the origin CA, the job uid the proxy's
        _, chain, key = _origin_tls(work)
        with _nginx(inet_ns, work, chain, key):
            got = _in_netns(host_ns, lambda: _measure(host_ns, work, samples, rounds))
        # A curl process never resumes: every "r" is one of the proxy's connections.
        resumed = (work / "access.log").read_text().split().count("r")
    if not got["usage_recorded"]:
        raise RuntimeError(
            "the proxy recorded no usage: the Messages API call was not metered; "
            f"its log:\n{got['proxy_log']}"
        )
    d50, p50 = statistics.median(got["direct_ttfb"]), statistics.median(got["proxy_ttfb"])
    d90, p90 = percentile(got["direct_ttfb"], 90), percentile(got["proxy_ttfb"], 90)
    added = p50 - d50
    shake = statistics.median(got["proxy_handshake"])
    dm, pm = statistics.median(got["direct_mibs"]), statistics.median(got["proxy_mibs"])
    cpu = statistics.median(got["proxy_cpu_s"])
    return [
        Result(
            id="P7-ttfb",
            what="first byte of a streamed Messages API call through the proxy (p50)",
            flashpods=f"p50 {ms(p50)} (+{ms(added)}), p90 {ms(p90)}",
            bare=f"p50 {ms(d50)}, p90 {ms(d90)}",
            ratio=p50 / d50,
            target=f"<= +{ms(TTFB_ADDED_TARGET_S)}",
            met=added <= TTFB_ADDED_TARGET_S,
            notes=(
                f"{len(got['proxy_ttfb'])} calls each way, alternating, a new connection "
                "each (curl time_starttransfer from the job's PID namespace, job uid); "
                "nginx serves a static SSE body; the proxy attests, terminates TLS, puts "
                "the key in, meters the stream and opens its own TLS connection upstream; "
                f"of the proxied p50, {ms(shake)} until the job's TLS handshake with the "
                "proxy is done (accept, attestation, handshake), the rest the request, the "
                "proxy's upstream connection and TLS handshake, and the answer; the proxy "
                f"spent {ms(got['proxy_cpu_per_call_s'])} of CPU per call; {resumed} of its "
                f"{len(got['proxy_ttfb']) + len(got['proxy_mibs']) + 1} upstream connections "
                "resumed a TLS session"
            ),
            extra={"added_s": added, "direct_p50_s": d50, "proxy_p50_s": p50, "handshake_s": shake},
        ),
        Result(
            id="P7-download",
            what="64 MiB HTTPS download through the proxy (host with a rule: TLS re-made)",
            flashpods=f"{pm:.0f} MiB/s",
            bare=f"{dm:.0f} MiB/s direct",
            ratio=pm / dm,
            target=f">= {DOWNLOAD_TARGET_MIBS:.0f} MiB/s",
            met=pm >= DOWNLOAD_TARGET_MIBS,
            notes=(
                f"median of {len(got['proxy_mibs'])} downloads each way, alternating, "
                f"nginx (sendfile off under TLS) as the origin; the proxy spent "
                f"{cpu:.2f} CPU s per 64 MiB ({cpu / (DOWNLOAD_BYTES / (1 << 30)):.1f} s/GiB)"
            ),
            extra={"direct_mibs": dm, "proxy_mibs": pm, "proxy_cpu_s": cpu},
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a few samples only")
    args = parser.parse_args(argv)
    for r in proxy_cost(args.smoke):
        print(f"{r.id}: {r.flashpods} | bare {r.bare} | ratio {r.ratio:.2f} (target {r.target})")
        print(f"   {r.notes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
