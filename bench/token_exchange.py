"""P6: token exchange latency (p50/p99) and exchanges per second, in peer and spire mode,
against a bare HTTP round trip over a unix socket to a trivial server in the same run.

Every request comes from inside a real rootless job container (`podman exec` of a
Python client; the host's Python is mounted read-only into the busybox image), so
peer mode pays its real kernel attestation. Peer mode is the dev host's own token
service; spire mode is the same code in this process, fed JWT-SVIDs minted by the
test CA of tests/unit/token (each exchange also asks Podman whether the job runs).

    python -m bench.token_exchange [--smoke]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import secrets
import shutil
import signal
import socketserver
import sys
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from flashpods_token.app import build_server
from flashpods_token.config import parse_config

from .common import WORKER_IMAGE, Result, bench_host, ms, percentile

REPO = Path(__file__).resolve().parent.parent
BENCH_BASE = Path(os.environ.get("FLASHPODS_TEST_BASE", "/var/tmp/flashpods-test"))
TARGET_RATIO = 3.0  # issue 7: token exchange p99 <= 3x the bare round trip

CLIENT = r"""
import json, socket, sys, time
path, n, token = sys.argv[1], int(sys.argv[2]), (sys.argv[3] if len(sys.argv) > 3 else "")
auth = f"Authorization: Bearer {token}\r\n" if token else ""
req = (f"POST /v1/exchange HTTP/1.1\r\nHost: t\r\nAccept: text/plain\r\n{auth}"
       "Content-Length: 0\r\nConnection: close\r\n\r\n").encode()
lat, statuses = [], {}
start = time.perf_counter()
for _ in range(n):
    t = time.perf_counter()
    s = socket.socket(socket.AF_UNIX); s.connect(path); s.sendall(req)
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    lat.append(time.perf_counter() - t)
    code = data[9:12].decode()
    statuses[code] = statuses.get(code, 0) + 1
total = time.perf_counter() - start
print(json.dumps({"lat": lat, "total": total, "statuses": statuses}))
"""


class _Trivial(BaseHTTPRequestHandler):
    """The bare tool: answers every POST with a fixed small body, nothing else."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b"GITHUB_TOKEN=Z2hwLWJlbmNo\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True


def _serve(server) -> threading.Thread:
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    return t


def _test_ca():
    path = REPO / "tests" / "unit" / "token" / "svid_ca.py"
    spec = importlib.util.spec_from_file_location("flashpods_bench_svid_ca", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.TestCA()


def _run_client(host, job_id: str, sock_in_ctr: str, n: int, token: str = "") -> dict:
    out = host.podman(
        "exec", job_id, "/usr/bin/python3", "/bench/client.py", sock_in_ctr, str(n), token
    )
    if out.returncode != 0:
        raise RuntimeError(f"bench client failed (exit {out.returncode}): {out.stderr.strip()}")
    return json.loads(out.stdout)


def _summary(run: dict) -> tuple[float, float, float]:
    lat = run["lat"]
    return percentile(lat, 50), percentile(lat, 99), len(lat) / run["total"]


def exchange(smoke: bool) -> list[Result]:
    n = 30 if smoke else 1000
    work = BENCH_BASE / f"bench-token-{secrets.token_hex(4)}"
    work.mkdir(parents=True, mode=0o755)
    work.chmod(0o755)
    servers = []
    try:
        with bench_host(
            secrets={"GITHUB_TOKEN": "ghp-bench-" + secrets.token_hex(4)},
            roles={"worker": ["GITHUB_TOKEN"], "sub_agent": ["GITHUB_TOKEN"]},
            # The benchmark is one identity hammering the socket: lift the rate limit.
            token_overrides={"rate_limit": {"per_s": 1e6, "burst": 1_000_000}},
        ) as host:
            (work / "client.py").write_text(CLIENT)
            trivial = socketserver.ThreadingUnixStreamServer(str(work / "trivial.sock"), _Trivial)
            trivial.daemon_threads = True
            os.chmod(work / "trivial.sock", 0o666)
            servers.append(trivial)
            _serve(trivial)

            ca = _test_ca()
            spire_cfg = dict(host.token_config)
            spire_cfg.update(
                socket=str(work / "spire.sock"),
                mode="spire",
                audit_log=str(work / "spire-audit.log"),
                spire={"bundle_file": str(work / "bundle.json"), "agent_socket": None,
                       "audience": "flashpods-token"},
            )  # fmt: skip
            (work / "bundle.json").write_text(json.dumps(ca.server_bundle()))
            spire_server, cleanup = build_server(parse_config(spire_cfg))
            servers.append(spire_server)
            _serve(spire_server)

            # A job container as the API makes them: named after the job, labelled. The
            # reaper removes containers of its instance that have no live job record, so
            # it is paused while this one stands in for a job.
            host.kill("reaper", signal.SIGSTOP)
            job_id = "job_" + "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz234567")
                                      for _ in range(12))  # fmt: skip
            run = host.podman(
                "run", "-d", "--name", job_id, "--userns=keep-id", "--init",
                "--label", f"flashpods.job={job_id}", "--label", "flashpods.kind=worker",
                "--label", f"flashpods.instance={host.settings.instance}",
                "-v", "/usr:/usr:ro", "-v", "/usr/lib:/lib:ro", "-v", "/lib64:/lib64:ro",
                "-v", f"{work}:/bench:ro",
                "-v", f"{host.token_socket}:/run/flashpods/token.sock",
                WORKER_IMAGE, "sleep", "3600",
            )  # fmt: skip
            if run.returncode != 0:
                raise RuntimeError(f"podman run failed: {run.stderr.strip()}")

            # Warm-up: the first exchange of a job fills the attestation caches (peer:
            # namespace fds; spire: the job's liveness pidfd), which costs Podman calls.
            warm = max(5, n // 20)
            token = ca.mint(ca.spiffe_id(job_id), ttl=3600)
            for sock, tok in (
                ("/bench/trivial.sock", ""),
                ("/run/flashpods/token.sock", ""),
                ("/bench/spire.sock", token),
            ):
                _run_client(host, job_id, sock, warm, tok)
            bare = _run_client(host, job_id, "/bench/trivial.sock", n)
            peer = _run_client(host, job_id, "/run/flashpods/token.sock", n)
            spire = _run_client(host, job_id, "/bench/spire.sock", n, token)
            cleanup()
            host.podman("rm", "-f", "-t", "0", job_id)
            host.kill("reaper", signal.SIGCONT)
    finally:
        for s in servers:
            s.shutdown()
            s.server_close()
        shutil.rmtree(work, ignore_errors=True)

    for name, r in (("peer", peer), ("spire", spire), ("bare", bare)):
        if set(r["statuses"]) != {"200"}:
            raise RuntimeError(f"{name} exchanges did not all succeed: {r['statuses']}")
    b50, b99, brate = _summary(bare)
    results = []
    for mode, r in (("peer", peer), ("spire", spire)):
        p50, p99, rate = _summary(r)
        ratio = p99 / b99
        results.append(
            Result(
                id=f"P6-{mode}",
                what=f"token exchange from a job container, {mode} mode (p99)",
                flashpods=f"p50 {ms(p50)}, p99 {ms(p99)}, {rate:.0f}/s",
                bare=f"p50 {ms(b50)}, p99 {ms(b99)}, {brate:.0f}/s",
                ratio=ratio,
                target=f"<= {TARGET_RATIO:.0f}x",
                met=ratio <= TARGET_RATIO,
                notes=(
                    f"{n} sequential exchanges (new connection each) from inside one "
                    "rootless container"
                    + (
                        "; spire mode asks Podman per exchange whether the job runs"
                        if mode == "spire"
                        else ""
                    )
                ),
                extra={"p50_s": p50, "p99_s": p99, "rate": rate, "bare_p99_s": b99},
            )
        )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a few samples only")
    args = parser.parse_args(argv)
    for r in exchange(args.smoke):
        print(f"{r.id}: {r.flashpods} | bare {r.bare} | ratio {r.ratio:.2f} (target {r.target})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
