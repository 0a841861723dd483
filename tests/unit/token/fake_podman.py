"""A stand-in for Podman's REST API on a unix socket, answering from a dict.

Only the two libpod calls the token service makes are served: list running
containers (with the label filter) and inspect one container by name or id.
"""

from __future__ import annotations

import json
import os
import socketserver
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler


def _label_matches(labels: dict, wanted: str) -> bool:
    key, sep, value = wanted.partition("=")
    return labels.get(key) == value if sep else key in labels


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002
        pass

    def _send(self, status: int, obj) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        fake: FakePodman = self.server.fake
        url = urllib.parse.urlparse(self.path)
        fake.calls.append(url.path)
        if url.path == "/v4.0.0/libpod/containers/json":
            filters = json.loads(urllib.parse.parse_qs(url.query)["filters"][0])
            rows = []
            for c in fake.containers.values():
                labels = c["Labels"]
                ok = all(
                    (labels.get(f.split("=", 1)[0]) == f.split("=", 1)[1])
                    if "=" in f
                    else f in labels
                    for f in filters.get("label", [])
                )
                if ok and c["State"] == "running":
                    rows.append(
                        {
                            "Id": c["Id"],
                            "Names": [c["Name"]],
                            "State": "running",
                            "Pid": c["Pid"],
                            "Labels": labels,
                        }
                    )
            self._send(200, rows)
            return
        prefix = "/v4.0.0/libpod/containers/"
        if url.path.startswith(prefix) and url.path.endswith("/json"):
            name = urllib.parse.unquote(url.path[len(prefix) : -len("/json")])
            c = fake.containers.get(name) or next(
                (x for x in fake.containers.values() if x["Id"] == name), None
            )
            if c is None:
                self._send(404, {"cause": "no such container"})
                return
            running = c["State"] == "running"
            self._send(
                200,
                {
                    "Id": c["Id"],
                    "Name": c["Name"],
                    "State": {
                        "Status": c["State"],
                        "Running": running,
                        "Pid": c["Pid"] if running else 0,
                        "FinishedAt": c.get("FinishedAt", "0001-01-01T00:00:00Z"),
                    },
                    "Config": {"Labels": c["Labels"]},
                },
            )
            return
        self._send(404, {"cause": "not served by the fake"})


class FakePodman:
    def __init__(self, path: str, instance: str):
        self.path = path
        self.instance = instance
        self.containers: dict[str, dict] = {}
        self.calls: list[str] = []
        self._server = socketserver.ThreadingUnixStreamServer(path, _Handler)
        self._server.daemon_threads = True
        self._server.fake = self
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return "unix://" + self.path

    def add_job(
        self,
        job_id: str,
        kind: str = "worker",
        *,
        pid: int | None = None,
        state: str = "running",
        instance: str | None = None,
        **extra,
    ) -> dict:
        c = {
            "Id": (job_id.encode().hex() + "0" * 64)[:64],
            "Name": job_id,
            "State": state,
            # Default: this test process, which is alive for the whole test.
            "Pid": os.getpid() if pid is None else pid,
            "Labels": {
                "flashpods.job": job_id,
                "flashpods.kind": kind,
                "flashpods.instance": instance or self.instance,
            },
            **extra,
        }
        self.containers[job_id] = c
        return c

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
