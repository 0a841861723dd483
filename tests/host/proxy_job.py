"""Run inside a job (agent image): the proxy's two wire shapes against a list of targets.

    python3 proxy_job.py '{"connect": [["169.254.169.254", 80], ...],
                           "connect_tls": [["ruled-internet.test", 443]], "tls": ["metadata.test"]}'

`connect`: CONNECT through flashpods-init's relay (the HTTPS_PROXY it set), as every
HTTPS_PROXY client does; on 200 the stand-in behind the tunnel speaks first (its banner).
`connect_tls`: the same, then TLS through the tunnel trusting the proxy's CA (a host with
a rule: the proxy terminates it) and one GET. `tls`: TLS straight onto the mounted proxy
socket with `curl --unix-socket` (SNI names the host). Prints one line:
RESULT {"<shape> <target>": {"status": N, "code": X-Flashpods-Proxy or "", "message":
the refusal's message, "banner": what came through}}.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import urllib.parse

SOCK = "/run/flashpods/proxy.sock"


def _authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _read_head(s: socket.socket) -> tuple[bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def _read_all(s: socket.socket, rest: bytes) -> bytes:
    while True:
        try:
            chunk = s.recv(4096)
        except (TimeoutError, OSError):
            break
        if not chunk:
            break
        rest += chunk
    return rest


def _answer(head: bytes, body: bytes) -> dict:
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1]) if lines and lines[0].startswith("HTTP/") else 0
    code = ""
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.lower() == "x-flashpods-proxy":
            code = value.strip()
    try:
        message = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = ""
    return {"status": status, "code": code, "message": message, "banner": ""}


def via_connect(host: str, port: int, tls: bool) -> dict:
    relay = urllib.parse.urlsplit(os.environ["HTTPS_PROXY"])
    target = _authority(host, port)
    with socket.create_connection((relay.hostname, relay.port), timeout=10) as s:
        s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        head, rest = _read_head(s)
        if not head.startswith(b"HTTP/1.1 200"):
            return _answer(head, _read_all(s, rest))
        result = _answer(head, b"")
        if tls:
            ctx = ssl.create_default_context(cafile=os.environ["FLASHPODS_PROXY_CA"])
            with ctx.wrap_socket(s, server_hostname=host) as t:
                t.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
                inner_head, inner_rest = _read_head(t)
                inner = _answer(inner_head, b"")
                body = _read_all(t, inner_rest)
                result["banner"] = f"{inner['status']} {body.decode(errors='replace').strip()}"
        else:
            s.settimeout(5)
            result["banner"] = _read_all(s, rest).decode(errors="replace").split("\n")[0]
        return result


def via_tls(name: str) -> dict:
    argv = ["curl", "-sS", "-m", "10", "-D", "-", "--unix-socket", SOCK]
    argv += ["--cacert", os.environ["FLASHPODS_PROXY_CA"], f"https://{name}/"]
    done = subprocess.run(argv, capture_output=True, timeout=30)
    head, _, body = done.stdout.partition(b"\r\n\r\n")
    result = _answer(head, body)
    if result["status"] == 200:
        result["banner"] = body.decode(errors="replace").strip()
    if not head:
        result["message"] = done.stderr.decode(errors="replace").strip()
    return result


def _tried(fn, *args) -> dict:
    try:
        return fn(*args)
    except (OSError, ssl.SSLError, subprocess.SubprocessError, ValueError) as exc:
        return {"status": 0, "code": "", "message": f"{type(exc).__name__}: {exc}", "banner": ""}


def main() -> None:
    targets = json.loads(sys.argv[1])
    out = {}
    for host, port in targets.get("connect", []):
        out[f"connect {host} {port}"] = _tried(via_connect, host, port, False)
    for host, port in targets.get("connect_tls", []):
        out[f"connect {host} {port}"] = _tried(via_connect, host, port, True)
    for name in targets.get("tls", []):
        out[f"tls {name}"] = _tried(via_tls, name)
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
