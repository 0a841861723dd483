"""The only code in the token service that talks to Podman: its REST API on a unix socket.

It answers one question in two shapes: which job containers of this instance are
running (peer mode), and whether one job's container is running (spire mode).
"""

from __future__ import annotations

import http.client
import json
import socket
import urllib.parse
from dataclasses import dataclass

API = "/v4.0.0/libpod"
ZERO_TIME = "0001-01-01T00:00:00Z"


class PodmanError(Exception):
    """Podman could not be asked; the caller refuses the exchange (fail closed)."""


@dataclass(frozen=True)
class RunningContainer:
    id: str
    name: str
    pid: int
    job: str
    kind: str


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("podman", timeout=timeout)
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


class PodmanClient:
    def __init__(self, url: str, instance: str, timeout: float = 5.0):
        if not url.startswith("unix://"):
            raise PodmanError("podman_url must be unix:///path")
        self._path = url[len("unix://") :]
        self.instance = instance
        self._timeout = timeout

    def _get(self, path: str, query: dict | None = None):
        target = API + path
        if query:
            target += "?" + urllib.parse.urlencode(query)
        conn = _UnixHTTPConnection(self._path, self._timeout)
        try:
            conn.request("GET", target)
            resp = conn.getresponse()
            body = resp.read()
        except OSError as exc:
            raise PodmanError(f"podman socket {self._path}: {exc}") from None
        finally:
            conn.close()
        if resp.status == 404:
            return None
        if resp.status != 200:
            raise PodmanError(f"podman {path}: HTTP {resp.status}")
        try:
            return json.loads(body)
        except json.JSONDecodeError:
            raise PodmanError(f"podman {path}: answer is not JSON") from None

    def running_jobs(self) -> list[RunningContainer]:
        filters = {
            "label": [f"flashpods.instance={self.instance}", "flashpods.job"],
            "status": ["running"],
        }
        rows = self._get("/containers/json", {"filters": json.dumps(filters)}) or []
        out = []
        for row in rows:
            labels = row.get("Labels") or {}
            if row.get("State") != "running" or not row.get("Pid"):
                continue
            out.append(
                RunningContainer(
                    id=row["Id"],
                    name=(row.get("Names") or [""])[0],
                    pid=int(row["Pid"]),
                    job=labels.get("flashpods.job", ""),
                    kind=labels.get("flashpods.kind", ""),
                )
            )
        return out

    def inspect(self, name_or_id: str) -> dict | None:
        quoted = urllib.parse.quote(name_or_id, safe="")
        return self._get(f"/containers/{quoted}/json")

    def job_state(self, job_id: str) -> tuple[bool, str]:
        """(running as a fresh job of this instance, kind label) of the container named job_id."""
        data = self.inspect(job_id)
        if not data:
            return False, ""
        return is_live_job(data, self.instance, job_id), labels_of(data).get("flashpods.kind", "")


def labels_of(inspect: dict) -> dict:
    return (inspect.get("Config") or {}).get("Labels") or {}


def is_live_job(inspect: dict, instance: str, job_id: str, pid: int | None = None) -> bool:
    """A running container of this instance, labelled for job_id, that never exited before.

    A container that has exited once and was started again (`podman start` on a
    finished job's container) is not a live job: its FinishedAt is set.
    """
    state = inspect.get("State") or {}
    labels = labels_of(inspect)
    if not state.get("Running") or state.get("Status") not in (None, "running"):
        return False
    if state.get("FinishedAt") not in (None, "", ZERO_TIME):
        return False
    if labels.get("flashpods.instance") != instance or labels.get("flashpods.job") != job_id:
        return False
    if pid is None and inspect.get("Name") != job_id:
        return False  # looked up by name: refuse a match on an id prefix
    return pid is None or state.get("Pid") == pid
