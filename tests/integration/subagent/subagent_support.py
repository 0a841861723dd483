"""Talking to a dev host that runs inside the test's `host` namespace, as the laptop would.

`HostApi` makes every HTTP call from a thread that joined the host namespace (the API
listens on 127.0.0.1 there) and uploads with the system rsync run there through
`nsenter`, exactly as the MCP server does it (rsync -a into the reserved upload).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from netlab import Netlab, NetnsThread, Response, http_request

FINAL = {"succeeded", "failed", "timed_out", "killed", "lost"}


class ApiError(AssertionError):
    pass


class HostApi:
    def __init__(self, host: Any, lab: Netlab) -> None:
        self.host = host
        self.lab = lab
        self._thread = NetnsThread(lab.path(lab.host))

    def close(self) -> None:
        self._thread.close()

    def request(self, method: str, path: str, body: Any = None, timeout: float = 60) -> Response:
        headers = {"Authorization": f"Bearer {self.host.api_token}"}
        url = f"{self.host.api_url}{path}"
        return self._thread.call(http_request, url, method, headers, body, timeout)

    def json(self, method: str, path: str, body: Any = None, expect: int = 200) -> Any:
        resp = self.request(method, path, body)
        if resp.status != expect:
            raise ApiError(
                f"{method} {path} -> {resp.status} (wanted {expect}): {resp.body[:500]!r}"
            )
        return resp.json()

    # ---- the laptop's operations ----------------------------------------------------

    def upload(self, files: dict[str, str]) -> str:
        """Reserve an upload and rsync `files` (relative path -> text) into it."""
        answer = self.json("POST", "/uploads", {}, expect=201)
        with tempfile.TemporaryDirectory(prefix="fpa-upload-") as src:
            for rel, text in files.items():
                path = Path(src, rel)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
            result = self.lab.run(["rsync", "-a", f"{src}/", answer["rsync_url"]])
        if result.returncode != 0:
            raise ApiError(f"rsync to {answer['rsync_url']} failed: {result.stderr.strip()}")
        return answer["upload_id"]

    def spawn(self, **request: Any) -> dict:
        return self.json("POST", "/jobs", request, expect=201)["job"]

    def job(self, job_id: str) -> dict:
        return self.json("GET", f"/jobs/{job_id}")["job"]

    def jobs(self) -> list[dict]:
        return self.json("GET", "/jobs?limit=500")["jobs"]

    def wait(self, job_id: str, timeout: float = 180) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job["status"] in FINAL:
                return job
            if time.monotonic() > deadline:
                raise ApiError(f"job {job_id} still {job['status']} after {timeout} s: {job}")
            time.sleep(0.3)

    def wait_for(self, what: str, predicate: Any, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise ApiError(f"timed out after {timeout} s waiting for {what}")
            time.sleep(0.2)

    def kill(self, job_id: str) -> dict:
        return self.json("POST", f"/jobs/{job_id}/kill")["job"]

    def logs(self, job_id: str) -> bytes:
        """The whole raw log (stdout+stderr) of a job."""
        out = b""
        while True:
            resp = self.request("GET", f"/jobs/{job_id}/logs?offset={len(out)}&format=raw")
            if resp.status != 200:
                raise ApiError(f"logs of {job_id} -> {resp.status}: {resp.body[:300]!r}")
            out += resp.body
            if not resp.body:
                return out

    def artifacts(self, job_id: str) -> dict[str, dict]:
        listing = self.json("GET", f"/jobs/{job_id}/artifacts")
        return {entry["path"]: entry for entry in listing["artifacts"]}

    def artifact(self, job_id: str, path: str) -> bytes:
        resp = self.request("GET", f"/jobs/{job_id}/artifacts/{path}")
        if resp.status != 200:
            raise ApiError(f"artifact {path} of {job_id} -> {resp.status}: {resp.body[:300]!r}")
        return resp.body

    def summary(self, job_id: str) -> dict:
        return json.loads(self.artifact(job_id, "summary.json"))


def transcript(log: bytes) -> list[dict]:
    """The stream-json events in a sub-agent's log (other lines are the entrypoint's)."""
    events = []
    for line in log.splitlines():
        if line.startswith(b"{"):
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
    return events


def tool_uses(events: list[dict]) -> list[dict]:
    """Every tool_use block the agent's transcript shows, in order."""
    uses = []
    for event in events:
        if event.get("type") == "assistant":
            for block in event["message"].get("content", []):
                if block.get("type") == "tool_use":
                    uses.append(block)
    return uses


def tool_results(events: list[dict]) -> dict[str, dict]:
    """tool_use_id -> the tool_result block the agent got back."""
    results = {}
    for event in events:
        if event.get("type") == "user":
            content = event["message"].get("content")
            if isinstance(content, list):
                for block in content:
                    if block.get("type") == "tool_result":
                        results[block["tool_use_id"]] = block
    return results


def result_text(block: dict) -> str:
    content = block.get("content")
    if isinstance(content, list):
        return "\n".join(str(b.get("text", "")) for b in content if isinstance(b, dict))
    return str(content)
