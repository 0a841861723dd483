"""Podman's REST API over the job uid's service socket: the fast path beside the CLI.

Every `podman --url` call starts a Go client (~0.1 s of the 0.1-0.2 s a `run -d` costs on
these machines); the service itself answers a create and a start in tens of ms. This
module speaks HTTP/1.1 over the unix socket with the standard library, one connection
per call (the service closes idle ones, and a call must not inherit another's state).

Only what the runtime needs: the version probe, inspect, create, start, kill, remove. The payloads
are the libpod API's (`/v4.0.0/libpod/...`); the version prefix is the oldest this
code was written for, which Podman 4.x and 5.x both serve. Where 4.3 and 5.x read a
field differently, `spec_payload` says so (runtime.py picks the CLI when the probe
finds a version this module does not know).
"""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any
from urllib.parse import quote, urlsplit

API_PREFIX = "/v4.0.0/libpod"
# Major versions whose create payload `spec_payload` writes (see its docstring).
KNOWN_MAJORS = (4, 5)


class RestError(Exception):
    """The service refused or failed a call; `status` is its HTTP status (0: no answer)."""

    def __init__(self, message: str, status: int = 0, cause: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.cause = cause


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def socket_path(podman_url: str) -> str | None:
    """The socket path of a `unix://` URL (None for anything else: the CLI handles it)."""
    parts = urlsplit(podman_url)
    if parts.scheme != "unix" or not parts.path:
        return None
    return parts.path


class PodmanRest:
    def __init__(self, path: str, timeout_s: float = 60.0) -> None:
        self.path = path
        self.timeout_s = timeout_s

    def call(
        self,
        method: str,
        route: str,
        body: Any = None,
        timeout: float | None = None,
    ) -> tuple[int, bytes]:
        """(status, body) of one request; RestError when the service does not answer."""
        conn = _UnixConnection(self.path, timeout or self.timeout_s)
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        try:
            conn.request(method, API_PREFIX + route, body=data, headers=headers)
            response = conn.getresponse()
            return response.status, response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise RestError(f"the Podman service at {self.path} did not answer: {exc}") from exc
        finally:
            conn.close()

    def checked(self, method: str, route: str, body: Any = None, **kw: Any) -> Any:
        status, raw = self.call(method, route, body, **kw)
        if status >= 300:
            cause = _cause(raw)
            raise RestError(f"podman {method} {route} answered {status}: {cause}", status, cause)
        return json.loads(raw) if raw.strip() else None

    def version(self) -> str:
        """The service's Podman version, e.g. "4.3.1"."""
        answer = self.checked("GET", "/version", timeout=10)
        for component in answer.get("Components") or []:
            if component.get("Name") == "Podman Engine":
                return str(component.get("Version", ""))
        return str(answer.get("Version", ""))

    def inspect(self, name: str, timeout: float = 30) -> dict[str, Any] | None:
        """The container's inspect record, None if there is no such container."""
        status, raw = self.call("GET", f"/containers/{quote(name, safe='')}/json", timeout=timeout)
        if status == 404:
            return None
        if status >= 300:
            cause = _cause(raw)
            raise RestError(f"podman inspect {name} answered {status}: {cause}", status, cause)
        record = json.loads(raw)
        if not isinstance(record, dict):
            raise RestError(f"podman inspect {name} answered something other than an object")
        return record

    def create(self, payload: dict[str, Any]) -> tuple[str, list[str]]:
        """Create a container; (its id, Podman's warnings)."""
        answer = self.checked("POST", "/containers/create", payload)
        return str(answer["Id"]), [str(w) for w in answer.get("Warnings") or []]

    def start(self, name: str) -> None:
        status, raw = self.call("POST", f"/containers/{quote(name, safe='')}/start")
        if status not in (204, 304):  # 304: it runs already (a retried start)
            cause = _cause(raw)
            raise RestError(f"podman start {name} answered {status}: {cause}", status, cause)

    def kill(self, name: str, signal: str) -> bool:
        """Send `signal` (e.g. "TERM"); False if there is no such container."""
        route = f"/containers/{quote(name, safe='')}/kill?signal={quote(signal, safe='')}"
        status, raw = self.call("POST", route, timeout=30)
        if status == 404:
            return False
        if status == 409:  # not running: nothing to signal, as the CLI path ignores too
            return True
        if status >= 300:
            cause = _cause(raw)
            raise RestError(f"podman kill {name} answered {status}: {cause}", status, cause)
        return True

    def remove(self, name: str) -> bool:
        """Remove a container, running or not, at once; False if there was none."""
        route = f"/containers/{quote(name, safe='')}?force=true&timeout=0"
        status, raw = self.call("DELETE", route, timeout=60)
        if status == 404:
            return False
        if status >= 300:
            cause = _cause(raw)
            raise RestError(f"podman rm {name} answered {status}: {cause}", status, cause)
        return True


def _cause(raw: bytes) -> str:
    try:
        body = json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace").strip()[:500]
    if isinstance(body, dict):
        return str(body.get("message") or body.get("cause") or body)[:500]
    return str(body)[:500]


def major(version: str) -> int | None:
    head = version.split(".", 1)[0]
    return int(head) if head.isdigit() else None
