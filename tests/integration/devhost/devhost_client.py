"""Talking to a dev host's API the way `curl` in the README does (requests, bearer token)."""

from __future__ import annotations

import time
from typing import Any

import requests

FINAL = {"succeeded", "failed", "timed_out", "killed", "lost"}


class Client:
    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.session.get(f"{self.url}{path}", timeout=30, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.session.post(f"{self.url}{path}", timeout=30, **kwargs)

    def run_worker(self, command: str, timeout_s: float = 120) -> dict[str, Any]:
        """Submit a worker job and wait until it is final; returns the job record."""
        created = self.post("/jobs", json={"kind": "worker", "command": command})
        assert created.status_code == 201, created.text
        job_id = created.json()["job"]["id"]
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.get(f"/jobs/{job_id}").json()["job"]
            if job["status"] in FINAL:
                return job
            assert time.monotonic() < deadline, f"job {job_id} still {job['status']}"
            time.sleep(0.2)

    def full_log(self, job_id: str) -> str:
        text, offset = "", 0
        while True:
            page = self.get(f"/jobs/{job_id}/logs", params={"offset": offset}).json()
            text += page["data"]
            if page["next_offset"] == offset or page["final"]:
                return text
            offset = page["next_offset"]
