"""The reaper against a fake Podman: exits, timeouts, lost containers, orphans, retention."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from flashpods_api.runtime import PodmanError


def test_exit_codes_become_succeeded_or_failed(host):
    ok, bad = host.job("true"), host.job("false")
    host.runtime.exit(ok["id"], 0)
    host.runtime.exit(bad["id"], 3)
    host.reaper.tick()
    assert host.store.get_job(ok["id"])["status"] == "succeeded"
    failed = host.store.get_job(bad["id"])
    assert (failed["status"], failed["exit_code"], failed["error"]) == ("failed", 3, None)
    assert host.registrar.unregistered == [ok["id"], bad["id"]]
    assert host.runtime.boxes == {}


def test_queued_jobs_start_fifo_when_a_slot_frees(make_host):
    host = make_host(max_concurrent_jobs=1)
    jobs = [host.job(f"echo {n}") for n in range(3)]
    host.reaper.tick()
    assert [host.store.get_job(j["id"])["status"] for j in jobs] == ["running", "queued", "queued"]
    host.runtime.exit(jobs[0]["id"], 0)
    host.reaper.tick()
    assert [host.store.get_job(j["id"])["status"] for j in jobs] == [
        "succeeded",
        "running",
        "queued",
    ]


def test_timeout_stops_with_term_then_kill_after_the_grace(make_host):
    host = make_host(kill_grace_s=0.2)
    job = host.job("sleep 100", timeout_s=0.1)
    time.sleep(0.15)
    host.reaper.tick()
    assert (job["id"], "TERM") in host.runtime.signals
    assert host.store.get_job(job["id"])["status"] == "running"
    time.sleep(0.25)
    host.reaper.tick()  # grace over: SIGKILL (the fake exits with 137)
    assert (job["id"], "KILL") in host.runtime.signals
    host.reaper.tick()
    final = host.store.get_job(job["id"])
    assert (final["status"], final["exit_code"]) == ("timed_out", 137)
    assert "timeout_s" in final["error"]


def test_vanished_container_is_lost_with_its_log_kept(host):
    job = host.job()
    host.write_ctr_log(job["id"], ["2026-01-01T00:00:00.0+00:00 stdout F last words"])
    del host.runtime.boxes[job["id"]]
    host.reaper.tick()
    lost = host.store.get_job(job["id"])
    assert lost["status"] == "lost" and "disappeared" in lost["error"]
    assert (Path(host.raw["storage"]["logs"]) / f"{job['id']}.log").read_bytes() == b"last words\n"


def test_a_job_started_between_the_tick_reads_is_not_lost(host, monkeypatch):
    """The tick reads jobs, then containers; a starter may run the job in between.

    The listing then predates the container, so the job must wait for the next tick,
    not be ended as lost (seen in CI: P4a's fourth job, cold-started under load).
    """
    job = host.job()
    host.store.transition(job["id"], ("running",), status="starting", claimed_at=time.time())
    listing = host.runtime.containers

    def listed_just_before_the_start() -> list:
        before = [c for c in listing() if job["id"] not in (c.get("Names") or [])]
        host.store.transition(job["id"], ("starting",), status="running", started_at=time.time())
        return before

    monkeypatch.setattr(host.runtime, "containers", listed_just_before_the_start)
    host.reaper.tick()
    assert host.store.get_job(job["id"])["status"] == "running"
    monkeypatch.setattr(host.runtime, "containers", listing)
    host.reaper.tick()
    assert host.store.get_job(job["id"])["status"] == "running"
    host.runtime.exit(job["id"], 0)
    host.reaper.tick()
    assert host.store.get_job(job["id"])["status"] == "succeeded"


def test_orphan_containers_without_a_record_are_removed(host):
    host.runtime.boxes["job_zzzzzzzzzzzz"] = {"Names": ["job_zzzzzzzzzzzz"], "State": "running"}
    host.reaper.tick()
    assert "job_zzzzzzzzzzzz" in host.runtime.removed


def test_a_job_left_starting_by_a_crash_is_queued_again_then_started(make_host):
    host = make_host(max_concurrent_jobs=1)
    job = host.job()
    host.runtime.exit(job["id"], 0)
    host.reaper.tick()
    second = host.post("/jobs", {"kind": "worker", "command": "x"}).get_json()["job"]
    # Simulate an API killed between the claim and podman run.
    host.runtime.down = True
    host.store.transition(
        second["id"], ("running",), status="starting", claimed_at=time.time() - 1000
    )
    host.runtime.boxes.pop(second["id"], None)
    host.runtime.down = False
    host.reaper.tick()
    assert host.store.get_job(second["id"])["status"] == "running"


def test_log_cap_notes_and_hard_cap_kills(make_host):
    host = make_host(limits={"log_bytes": 100})
    job = host.job()
    host.write_ctr_log(job["id"], [f"2026-01-01T00:00:00.0+00:00 stdout F {'x' * 60}"] * 2)
    host.reaper.tick()
    assert host.store.get_job(job["id"])["log_capped"] == 1
    host.write_ctr_log(job["id"], [f"2026-01-01T00:00:00.0+00:00 stdout F {'y' * 60}"] * 2)
    host.reaper.tick()
    assert (job["id"], "KILL") in host.runtime.signals
    host.reaper.tick()
    final = host.store.get_job(job["id"])
    assert final["status"] == "failed" and "log cap" in final["error"]
    log = (Path(host.raw["storage"]["logs"]) / f"{job['id']}.log").read_bytes()
    assert log.startswith(b"x" * 60 + b"\n") and b"log size cap of 100 bytes" in log
    assert final["log_bytes"] == len(log)


def test_retention_deletes_artifacts_logs_and_stale_uploads(make_host):
    host = make_host(retention={"artifacts_s": 0.1, "logs_s": 0.1, "uploads_s": 0.1})
    upload = host.post("/uploads").get_json()["upload_id"]
    stale = host.post("/uploads").get_json()["upload_id"]
    job = host.job(upload_id=upload)
    art = Path(host.raw["storage"]["artifacts"]) / job["id"]
    (art / "out.txt").write_text("x")
    host.runtime.exit(job["id"], 0)
    host.reaper.tick()
    time.sleep(0.2)
    host.reaper.retention()
    final = host.get(f"/jobs/{job['id']}").get_json()["job"]
    assert final["artifacts_available"] is False and final["logs_available"] is False
    assert not art.exists()
    assert not (Path(host.raw["storage"]["logs"]) / f"{job['id']}.log").exists()
    uploads = Path(host.raw["storage"]["uploads"])
    assert not (uploads / stale).exists() and not (uploads / ".bases" / upload).exists()
    assert host.store.get_upload(stale)["state"] == "expired"
    resp = host.get(f"/jobs/{job['id']}/artifacts")
    assert (resp.status_code, resp.get_json()["code"]) == (410, "artifacts_expired")
    resp = host.get(f"/jobs/{job['id']}/logs")
    assert (resp.status_code, resp.get_json()["code"]) == (410, "logs_expired")


def test_a_starting_job_whose_container_runs_is_adopted_at_once(host):
    job = host.job()
    # As if the API died right after `podman run`, before recording 'running'.
    host.store.transition(job["id"], ("running",), status="starting", claimed_at=time.time())
    host.reaper.tick()
    adopted = host.store.get_job(job["id"])
    assert adopted["status"] == "running" and adopted["limits_not_applied"] is None
    host.runtime.exit(job["id"], 0)
    host.reaper.tick()
    assert host.store.get_job(job["id"])["status"] == "succeeded"


def test_a_recent_starting_job_without_container_is_left_to_its_starter(host):
    job = host.job()
    host.store.transition(job["id"], ("running",), status="starting", claimed_at=time.time())
    host.runtime.boxes.clear()
    host.reaper.tick()
    assert host.store.get_job(job["id"])["status"] == "starting"


def test_jobs_wait_in_the_queue_while_podman_is_down(host):
    host.runtime.down = True
    job = host.job()
    assert (job["status"], job["queue_position"]) == ("queued", 1)
    with pytest.raises(PodmanError):
        host.reaper.tick()  # `podman ps` fails: run_forever logs it and waits for the next tick
    assert host.store.get_job(job["id"])["status"] == "queued"
    host.runtime.down = False
    host.reaper.tick()
    assert host.store.get_job(job["id"])["status"] == "running"


def test_artifacts_past_the_cap_kill_a_running_job(make_host):
    host = make_host(limits={"artifact_bytes": 1000})
    job = host.job("sleep 100")
    (Path(host.raw["storage"]["artifacts"]) / job["id"] / "big").write_bytes(b"x" * 2000)
    host.reaper.tick()
    assert (job["id"], "KILL") in host.runtime.signals
    host.reaper.tick()
    final = host.store.get_job(job["id"])
    assert final["status"] == "failed" and "into /artifacts" in final["error"]
    assert "was killed" in final["error"]


def test_artifacts_past_the_cap_at_exit_fail_the_job(make_host):
    host = make_host(limits={"artifact_bytes": 1000})
    job = host.job("write fast")
    (Path(host.raw["storage"]["artifacts"]) / job["id"] / "big").write_bytes(b"x" * 2000)
    host.runtime.exit(job["id"], 0)
    host.reaper.tick()
    final = host.store.get_job(job["id"])
    assert final["status"] == "failed" and "this host's cap" in final["error"]


def test_a_kill_between_the_ticks_read_and_the_exit_is_recorded_killed(host):
    # The reaper reads a job's row at the start of its tick; a kill can land after that
    # read and make the container exit before finish runs. finish must take the stop
    # reason as it is now (CI saw such a job recorded `failed`, exit 143).
    job = host.job("sleep 60")
    host.reaper.tick()
    stale = host.store.get_job(job["id"])
    assert stale["status"] == "running" and stale["stop_reason"] is None
    host.post(f"/jobs/{job['id']}/kill")
    host.runtime.exit(job["id"], 143)
    host.engine.finish(stale, 143)
    final = host.store.get_job(job["id"])
    assert (final["status"], final["exit_code"]) == ("killed", 143)


def test_only_one_reaper_per_database(tmp_path):
    from flashpods_api.reaper import hold_lock

    first = hold_lock(str(tmp_path / "db"))
    try:
        with pytest.raises(SystemExit, match="Another flashpods-reaper"):
            hold_lock(str(tmp_path / "db"))
    finally:
        os.close(first)
    os.close(hold_lock(str(tmp_path / "db")))  # free again once the first one is gone
