"""Retention with TTLs of seconds: artifacts, logs, stale uploads and kept bases go away."""

from __future__ import annotations

import time

import pytest
from api_it_support import Api

pytestmark = pytest.mark.slow


def test_files_expire_after_their_ttl(devhost_factory):
    host = devhost_factory(
        retention={"artifacts_s": 2, "logs_s": 8, "uploads_s": 2},
        api_overrides={"reaper": {"interval_s": 0.2}},
    )
    api = Api(host)
    used = api.upload({"a.txt": "a\n"})
    stale = api.upload({"b.txt": "b\n"})
    job = api.submit("cat a.txt; cp a.txt /artifacts/", upload_id=used["upload_id"])
    done = api.wait(job["id"])
    assert done["status"] == "succeeded"
    art = host.paths.artifacts / job["id"]
    log = host.paths.logs / f"{job['id']}.log"
    base = host.paths.uploads / ".bases" / used["upload_id"]
    assert art.exists() and log.exists() and base.exists()
    assert not (host.paths.uploads / used["upload_id"]).exists()  # moved to its base at start

    def wait_for(condition, what: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"{what} still there"
            time.sleep(0.2)

    wait_for(lambda: not art.exists(), "artifacts")
    wait_for(lambda: not api.job(job["id"])["artifacts_available"], "artifacts_available")
    assert api.get(f"/jobs/{job['id']}/artifacts").status_code == 410
    assert log.exists()  # logs live longer than artifacts here
    wait_for(lambda: not (host.paths.uploads / stale["upload_id"]).exists(), "stale upload")
    wait_for(lambda: not base.exists(), "upload base")
    wait_for(lambda: not log.exists(), "log")
    # The record is marked just after the files are gone.
    wait_for(lambda: not api.job(job["id"])["logs_available"], "logs_available")
    final = api.job(job["id"])
    assert final["artifacts_available"] is False and final["logs_available"] is False
    assert final["status"] == "succeeded"  # the record itself stays
    refused = api.post(
        "/jobs", {"kind": "worker", "command": "true", "upload_id": stale["upload_id"]}
    )
    assert (refused.status_code, refused.json()["code"]) == (400, "upload_expired")
