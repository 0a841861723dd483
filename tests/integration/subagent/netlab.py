"""Two network namespaces: the dev host and "the internet" that holds the model endpoint.

    host  198.51.100.1/24 (eth0) ── veth ── 198.51.100.254/24 (eth0)  inet
          default via .254                  203.0.113.10/24 on lo: the stand-in model

The dev host (launcher `netns=`) runs in `host`: its API and rsyncd listen on 127.0.0.1
there, its rootless containers' slirp4netns opens their connections there, and the
project's firewall is loaded there. A container reaches the stand-in model the way a
production container reaches api.anthropic.com: through the host's default route to a
public address (the documentation ranges play the public internet, and the firewall's
"public unicast only" rule lets them through).

Nothing here touches the machine's own namespace; both namespaces are deleted on exit.
The test process talks to services inside `host` from threads that joined it
(`NetnsThread`), and runs CLI tools there with `nsenter --net` (never `ip netns exec`,
which remounts /sys and breaks Podman's cgroup paths).
"""

from __future__ import annotations

import ctypes
import http.client
import json
import secrets
import subprocess
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

HOST_ADDR = "198.51.100.1"
ROUTER_ADDR = "198.51.100.254"
MODEL_ADDR = "203.0.113.10"
CLONE_NEWNET = 0x40000000


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")


def join_netns(path: str) -> None:
    """Move the calling thread (only it) into the network namespace at `path`."""
    libc = ctypes.CDLL(None, use_errno=True)
    with open(path, "rb") as ns:
        if libc.setns(ns.fileno(), CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns({path}) failed; tests need root")


@dataclass
class Netlab:
    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    created: list[str] = field(default_factory=list)

    @property
    def host(self) -> str:
        return f"fpa{self.tag}-h"

    @property
    def inet(self) -> str:
        return f"fpa{self.tag}-i"

    @staticmethod
    def path(name: str) -> str:
        return f"/run/netns/{name}"

    def up(self) -> Netlab:
        try:
            for name in (self.host, self.inet):
                _ip("netns", "add", name)
                self.created.append(name)
                _ip("-n", name, "link", "set", "lo", "up")
            _ip(
                "-n",
                self.host,
                "link",
                "add",
                "eth0",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                self.inet,
            )
            for name, addr in ((self.host, HOST_ADDR), (self.inet, ROUTER_ADDR)):
                _ip("-n", name, "addr", "add", f"{addr}/24", "dev", "eth0")
                _ip("-n", name, "link", "set", "eth0", "up")
            _ip("-n", self.inet, "addr", "add", f"{MODEL_ADDR}/24", "dev", "lo")
            _ip("-n", self.host, "route", "add", "default", "via", ROUTER_ADDR)
        except BaseException:
            self.down()
            raise
        return self

    def down(self) -> None:
        for name in reversed(self.created):
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=30)
        self.created.clear()

    def __enter__(self) -> Netlab:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()

    def run(self, argv: list[str], timeout: float = 120, **kw: Any) -> subprocess.CompletedProcess:
        """Run a command inside the host namespace."""
        return subprocess.run(
            ["nsenter", f"--net={self.path(self.host)}", "--", *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            **kw,
        )


class NetnsThread:
    """Run callables on one worker thread that lives in a network namespace."""

    def __init__(self, netns_path: str) -> None:
        self._pool = ThreadPoolExecutor(1, initializer=join_netns, initargs=(netns_path,))

    def call(self, fn: Any, *args: Any, **kw: Any) -> Any:
        return self._pool.submit(fn, *args, **kw).result()

    def close(self) -> None:
        self._pool.shutdown(wait=True)


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http_request(
    url: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: Any = None,
    timeout: float = 60,
) -> Response:
    """One HTTP request with the standard library (JSON body when `body` is not bytes)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    all_headers = dict(headers or {})
    if data is not None and not isinstance(body, bytes):
        all_headers.setdefault("Content-Type", "application/json")
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    try:
        conn.request(method, target, body=data, headers=all_headers)
        resp = conn.getresponse()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()
