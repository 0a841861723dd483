"""Waiting for services: sockets, TCP ports and /healthz, also inside a network namespace."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def wait_until(
    what: str, check: Callable[[], bool], timeout_s: float, alive: Callable[[], None]
) -> None:
    """Poll `check` until true; `alive` raises when the service died meanwhile."""
    deadline = time.monotonic() + timeout_s
    delay = 0.05
    while True:
        alive()
        if check():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {timeout_s:.0f} s")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)


def unix_socket_answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


def _in_netns(netns: str, argv: list[str], timeout_s: float = 5) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["nsenter", f"--net=/run/netns/{netns}", "--", *argv],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def tcp_answers(host: str, port: int, netns: str | None = None) -> bool:
    if netns:
        code = f"import socket; socket.create_connection(({host!r}, {port}), timeout=1).close()"
        return _in_netns(netns, ["python3", "-c", code]).returncode == 0
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError:
        return False
    return True


def http_get(url: str, netns: str | None = None) -> tuple[int | None, str]:
    """Status code and body of a GET; (None, reason) when nothing answered."""
    argv = ["curl", "-sS", "-m", "5", "-w", "\n%{http_code}", url]
    if netns:
        result = _in_netns(netns, argv, timeout_s=10)
    else:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    body, _, code = result.stdout.rpartition("\n")
    if not code.strip().isdigit() or int(code) == 0:
        return None, result.stderr.strip()
    return int(code), body


def http_status(url: str, netns: str | None = None) -> int | None:
    return http_get(url, netns)[0]


def free_port(host: str, netns: str | None = None) -> int:
    """A port nobody listens on right now (bind to 0), chosen inside `netns` when given."""
    if netns:
        code = f"import socket; s=socket.socket(); s.bind(({host!r}, 0)); print(s.getsockname()[1])"
        result = _in_netns(netns, ["python3", "-c", code])
        if result.returncode != 0:
            raise RuntimeError(f"cannot bind {host} in netns {netns}: {result.stderr.strip()}")
        return int(result.stdout)
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
