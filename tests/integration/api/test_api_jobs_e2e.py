"""Worker jobs through the real API: gunicorn, the reaper, rootless Podman, rsync uploads."""

from __future__ import annotations

import io
import json
import signal
import tarfile
import time

import pytest
import requests
from api_it_support import Api, wait_no_containers

pytestmark = pytest.mark.slow


@pytest.fixture
def api(devhost_factory):
    return Api(devhost_factory())


def test_worker_reads_its_upload_writes_output_and_an_artifact(api):
    upload = api.upload(
        {"input.txt": "forty-two\n", "src/keep.txt": "same\n", "src/old.txt": "old\n"}
    )
    script = (
        "cat input.txt; echo to-stderr >&2; wc -c < input.txt > /artifacts/count.txt;"
        " mkdir -p /artifacts/deep/er; echo nested > /artifacts/deep/er/n.txt;"
        " echo changed > src/old.txt; echo brand-new > added.txt; rm input.txt; exit 4"
    )
    started = time.monotonic()
    job = api.submit(script, upload_id=upload["upload_id"])
    assert job["status"] in ("running", "failed", "succeeded")  # started on the POST's fast path
    assert time.monotonic() - started < 5
    done = api.wait(job["id"])
    assert (done["status"], done["exit_code"]) == ("failed", 4)
    assert done["error"] is None and done["limits_not_applied"]
    assert api.log_text(job["id"]) == "forty-two\nto-stderr\n"
    assert done["log_bytes"] == len("forty-two\nto-stderr\n")

    listing = api.get(f"/jobs/{job['id']}/artifacts").json()
    paths = {a["path"]: a for a in listing["artifacts"]}
    assert {"count.txt", "deep/er/n.txt"} <= set(paths)
    assert api.get(f"/jobs/{job['id']}/artifacts/count.txt").content == b"10\n"
    tar_bytes = api.get(f"/jobs/{job['id']}/artifacts.tar").content
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        assert tar.extractfile("deep/er/n.txt").read() == b"nested\n"

    changes = json.loads(api.get(f"/jobs/{job['id']}/artifacts/_workspace/changes.json").content)
    assert changes["added"] == ["added.txt"]
    assert changes["modified"] == ["src/old.txt"]
    assert changes["deleted"] == ["input.txt"]
    assert (
        api.get(f"/jobs/{job['id']}/artifacts/_workspace/files/added.txt").content == b"brand-new\n"
    )
    diff = api.get(f"/jobs/{job['id']}/artifacts/_workspace/changes.diff").text
    assert "-old\n+changed\n" in diff
    assert wait_no_containers(api.host) == []  # removed after the exit code and log were recorded
    # The final status is recorded before the workspace goes (a crash in between keeps
    # the recorded changes; the reaper removes strays), so wait for the removal.
    assert _eventually_gone(api.host.paths.workspaces / job["id"])

    # The next upload can use this one as its rsync --link-dest basis.
    again = api.upload({"input.txt": "forty-two\n"}, basis=upload["upload_id"])
    assert again["link_dest"] == f"../.bases/{upload['upload_id']}/"


def test_logs_by_offset_and_follow(api):
    job = api.submit("for i in 1 2 3 4 5; do echo line $i; sleep 0.3; done; printf tail")
    streamed = api.get(f"/jobs/{job['id']}/logs", params={"follow": 1}, stream=True, timeout=30)
    chunks = list(streamed.iter_content(chunk_size=None))
    expected = "".join(f"line {i}\n" for i in range(1, 6)) + "tail"
    assert b"".join(chunks).decode() == expected
    assert len(chunks) > 1  # it really streamed while the job ran
    api.wait(job["id"])
    part = api.get(f"/jobs/{job['id']}/logs", params={"offset": 7, "limit": 7}).json()
    assert (part["data"], part["next_offset"], part["final"]) == ("line 2\n", 14, False)
    rest = api.get(f"/jobs/{job['id']}/logs", params={"offset": 35}).json()
    assert (rest["data"], rest["final"]) == ("tail", True)


def test_kill_running_and_queued(devhost_factory):
    api = Api(
        devhost_factory(
            max_concurrent_jobs=1, api_overrides={"reaper": {"interval_s": 0.2}, "kill_grace_s": 2}
        )
    )
    running = api.submit("echo started; sleep 300")
    queued = api.submit("echo never")
    api.wait(running["id"], statuses=("running",))
    assert api.job(queued["id"])["queue_position"] == 1
    dequeued = api.post(f"/jobs/{queued['id']}/kill").json()["job"]
    assert dequeued["status"] == "killed"
    t0 = time.monotonic()
    assert api.post(f"/jobs/{running['id']}/kill").status_code == 200
    assert api.post(f"/jobs/{running['id']}/kill").status_code == 200  # idempotent
    killed = api.wait(running["id"], timeout=30)
    assert killed["status"] == "killed" and time.monotonic() - t0 < 10
    assert api.log_text(running["id"]) == "started\n"
    assert api.job(queued["id"])["started_at"] is None
    assert wait_no_containers(api.host) == []


def test_timeout_stops_with_grace_then_kill(devhost_factory):
    api = Api(devhost_factory(api_overrides={"reaper": {"interval_s": 0.2}, "kill_grace_s": 1}))
    # The job ignores SIGTERM, so only the SIGKILL after the grace period ends it.
    job = api.submit("trap '' TERM; echo up; while true; do sleep 0.1; done", timeout_s=1.5)
    done = api.wait(job["id"], timeout=30)
    assert done["status"] == "timed_out" and "timeout_s" in done["error"]
    assert done["exit_code"] == 137
    assert api.log_text(job["id"]) == "up\n"


def test_queue_order_with_a_cap_of_one(devhost_factory):
    api = Api(devhost_factory(max_concurrent_jobs=1))
    jobs = [api.submit(f"echo {n}; sleep 0.2") for n in range(5)]
    finished = [api.wait(j["id"]) for j in jobs]
    starts = [f["started_at"] for f in finished]
    assert starts == sorted(starts)
    for a, b in zip(finished, finished[1:], strict=False):
        assert b["started_at"] >= a["finished_at"]  # never two at once
    assert all(f["status"] == "succeeded" for f in finished)


def test_output_past_the_hard_log_cap_kills_the_job(devhost_factory):
    api = Api(
        devhost_factory(
            api_overrides={"reaper": {"interval_s": 0.2}, "limits": {"log_bytes": 20000}}
        )
    )
    job = api.submit("while true; do echo 0123456789012345678901234567890123456789; done")
    done = api.wait(job["id"], timeout=60)
    assert done["status"] == "failed" and "log cap" in done["error"]
    assert done["log_capped"] is True
    text = api.log_text(job["id"])
    assert text.startswith("0123456789") and "log size cap of 20000 bytes" in text
    assert done["log_bytes"] == len(text.encode())


def test_artifacts_past_the_cap_kill_the_job(devhost_factory):
    limits = {"artifact_bytes": 100_000}
    api = Api(devhost_factory(api_overrides={"reaper": {"interval_s": 0.2}, "limits": limits}))
    job = api.submit("head -c 300000 /dev/zero > /artifacts/big; echo wrote; sleep 300")
    done = api.wait(job["id"], timeout=30)
    assert done["status"] == "failed" and "100000 bytes into /artifacts" in done["error"]
    assert api.log_text(job["id"]) == "wrote\n"


def test_files_a_job_locked_are_still_collected_and_removed(api):
    job = api.submit(
        "mkdir -p locked/in && echo x > locked/in/f && chmod 000 locked/in locked;"
        " echo secret > /artifacts/mine.txt && chmod 000 /artifacts/mine.txt"
    )
    done = api.wait(job["id"])
    assert done["status"] == "succeeded"
    # The final status is recorded before the workspace goes (a crash in between keeps
    # the recorded changes; the reaper removes strays), so wait for the removal.
    assert _eventually_gone(api.host.paths.workspaces / job["id"])
    assert api.get(f"/jobs/{job['id']}/artifacts/mine.txt").content == b"secret\n"


def test_openapi_is_served_and_healthz_reports_every_part(api):
    doc = api.get("/openapi.json").json()
    assert "/jobs/{job_id}/artifacts.tar" in doc["paths"]
    health = requests.get(api.url + "/healthz", timeout=10).json()
    assert health["ok"] is True and set(health["checks"]) == {
        "db",
        "podman",
        "reaper",
        "disk",
        "warm_pool",
    }


def test_healthz_names_a_dead_reaper_and_a_dead_podman(devhost_factory):
    host = devhost_factory()
    url = host.api_url + "/healthz"
    host.kill("reaper", signal.SIGKILL)
    deadline = time.monotonic() + 40
    while True:
        resp = requests.get(url, timeout=20)
        if resp.status_code == 503:
            break
        assert time.monotonic() < deadline, resp.json()
        time.sleep(0.5)
    assert resp.json()["failing"] == ["reaper"] and "heartbeat" in resp.json()["error"]
    host.kill("podman", signal.SIGKILL)
    deadline = time.monotonic() + 20
    while "podman" not in (body := requests.get(url, timeout=20).json()).get("failing", []):
        assert time.monotonic() < deadline, body
        time.sleep(0.5)
    assert body["code"] == "unhealthy" and "podman does not answer" in body["error"]


def test_a_start_podman_refuses_fails_the_job_with_podman_s_reason(devhost_factory):
    worker = "localhost/flashpods-worker:latest"
    missing = "localhost/flashpods-missing:latest"  # allowed, but not in the image store
    agent = "localhost/flashpods-agent:latest"
    images = {"worker": worker, "allowed": [worker, agent, missing]}
    api = Api(devhost_factory(api_overrides={"images": images}))
    job = api.submit("true", image=missing)
    done = api.wait(job["id"])
    assert done["status"] == "failed" and done["started_at"] is None
    assert "could not be started" in done["error"] and "flashpods-missing" in done["error"]
    assert wait_no_containers(api.host) == []
    # The final status is recorded before the workspace goes (a crash in between keeps
    # the recorded changes; the reaper removes strays), so wait for the removal.
    assert _eventually_gone(api.host.paths.workspaces / job["id"])


def _eventually_gone(path, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while path.exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True
