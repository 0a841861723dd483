"""The only code in the token service that talks to Podman: its REST API on a unix socket.

It answers one question in two shapes: which job containers of this instance are
running (peer mode), and whether one job's container is running (spire mode).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import stat
import urllib.parse
from dataclasses import dataclass
from typing import Any

API = "/v4.0.0/libpod"
ZERO_TIME = "0001-01-01T00:00:00Z"
# Warm containers (services/api/flashpods_api/warm.py) are created before any job claims
# them; the API hands a claimed one its command as a file in this read-only mount.
WARM_LABEL = "flashpods.warm"
CONTROL_IN_CONTAINER = "/flashpods/control"
HANDED_OVER_FILE = "command"


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

    def _get(self, path: str, query: dict[str, str] | None = None) -> Any:
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
    if not claimed(inspect):
        return False
    return pid is None or state.get("Pid") == pid


def claimed(inspect: dict) -> bool:
    """False for a warm container no job has claimed yet: it gets no secrets.

    The API hands a claimed warm container its command by writing `command` into the
    job's control directory (owned by the API user; the container and the `flashpods`
    user can only read it), mounted at /flashpods/control. Its source path comes from
    Podman, not from the container, so a container cannot point it elsewhere.
    """
    if labels_of(inspect).get(WARM_LABEL) != "1":
        return True
    for mount in inspect.get("Mounts") or []:
        if mount.get("Destination") == CONTROL_IN_CONTAINER and mount.get("Source"):
            try:
                st = os.lstat(os.path.join(mount["Source"], HANDED_OVER_FILE))
            except OSError:
                return False
            return stat.S_ISREG(st.st_mode)
    return False
