"""The warm pool against a fake Podman: fill, take, hand over, account, finish, reconcile."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from api_fakes import decode_command
from flashpods_api import warm
from flashpods_api.config import ConfigError, from_dict
from flashpods_api.runtime import run_args
from flashpods_api.store import UploadUnavailable

POOL = {"worker": 2}


def _filled(make_host, **overrides):
    host = make_host(warm_pool=overrides.pop("warm_pool", POOL), **overrides)
    host.reaper.tick()
    return host


def _control(host, job_id: str) -> Path:
    return host.config.control_dir / job_id


def test_reaper_fills_the_pool_with_waiting_labelled_containers(make_host):
    host = _filled(make_host)
    rows = host.store.warm_rows()
    assert [r["state"] for r in rows] == ["ready", "ready"]
    for row in rows:
        spec = host.runtime.specs[row["id"]]
        assert spec.argv == ["/flashpods/bin/flashpods-init", "--wait-command"]
        args = run_args(spec)
        assert "flashpods.warm=1" in args and f"flashpods.job={row['id']}" in args
        mount = f"type=bind,source={_control(host, row['id'])},destination=/flashpods/control"
        assert mount + ",ro=true" in args
        assert spec.env["FLASHPODS_JOB_ID"] == row["id"]
        assert (row["id"], "worker") in host.registrar.registered  # identity at creation
    assert host.store.count_active() == 0  # not jobs: never counted against the cap
    health = host.client.get("/healthz").get_json()
    assert health["checks"]["warm_pool"]["ready"] == {"worker": 2, "sub_agent": 0}
    host.reaper.tick()
    assert len(host.store.warm_rows()) == 2  # full: nothing more created


def test_a_job_takes_a_warm_container_and_gets_its_command_handed_over(make_host):
    host = _filled(make_host)
    ready = [r["id"] for r in host.store.warm_rows()]
    runs_before = len(host.runtime.specs)
    job = host.job("echo hi; exit 3", env={"CI": "1"})
    assert job["id"] == ready[0]
    assert job["status"] == "running"
    record = host.store.get_job(job["id"])
    assert record["started_at"] and record["claimed_at"]
    assert record["limits_not_applied"] is None
    assert len(host.runtime.specs) == runs_before  # no `podman run` on the hot path
    argv, env = decode_command((_control(host, job["id"]) / "command").read_bytes())
    assert argv == ["sh", "-c", "echo hi; exit 3"]
    assert env == {"CI": "1"}
    assert host.store.get_warm(job["id"])["state"] == "taken"
    host.reaper.tick()  # refills
    states = [r["state"] for r in host.store.warm_rows() if r["id"] != job["id"]]
    assert states == ["ready", "ready"]
    host.runtime.exit(job["id"], 3)
    host.reaper.tick()
    done = host.store.get_job(job["id"])
    assert (done["status"], done["exit_code"]) == ("failed", 3)
    assert host.store.get_warm(job["id"]) is None
    assert not _control(host, job["id"]).exists()


def test_a_warm_job_gets_its_upload_and_keeps_it_as_its_base(make_host):
    host = _filled(make_host)
    upload = host.post("/uploads").get_json()["upload_id"]
    src = Path(host.raw["storage"]["uploads"]) / upload
    (src / "input.txt").write_text("payload\n")
    job = host.job("cat input.txt", upload_id=upload)
    moved = _control(host, job["id"]) / "upload"
    assert (moved / "input.txt").read_text() == "payload\n"
    assert not src.exists()
    _argv, env = decode_command((_control(host, job["id"]) / "command").read_bytes())
    assert env["FLASHPODS_INPUT_DIR"] == "/flashpods/control/upload"
    workspace = host.engine.files.workspace(job["id"])
    (workspace / "input.txt").write_text("payload\n")
    (workspace / "new.txt").write_text("made\n")
    host.runtime.exit(job["id"], 0)
    host.reaper.tick()
    done = host.store.get_job(job["id"])
    assert done["status"] == "succeeded"
    assert done["workspace_changes"]["added"] == 1 and done["workspace_changes"]["modified"] == 0
    base = host.engine.files.base_dir(upload)
    assert (base / "input.txt").read_text() == "payload\n"
    assert not _control(host, job["id"]).exists()


def test_a_job_that_must_wait_starts_cold_and_leaves_the_pool_alone(make_host):
    host = _filled(make_host, max_concurrent_jobs=1)
    first = host.job("sleep 60")
    second = host.job("sleep 60")
    assert first["status"] == "running" and second["status"] == "queued"
    assert host.store.get_warm(second["id"]) is None
    assert sorted(r["state"] for r in host.store.warm_rows()) == ["ready", "taken"]
    host.runtime.exit(first["id"], 0)
    host.reaper.tick()
    assert host.store.get_job(second["id"])["status"] == "running"
    assert host.runtime.specs[second["id"]].argv[-3:] == ["sh", "-c", "sleep 60"]


@pytest.mark.parametrize(
    "fields",
    [{"resources": {"cpus": 1}}, {"image": "localhost/flashpods-agent:latest"}],
)
def test_jobs_the_pool_cannot_serve_start_cold(make_host, fields):
    host = _filled(make_host)
    job = host.job("true", **fields)
    assert host.store.get_warm(job["id"]) is None
    assert host.runtime.specs[job["id"]].control_dir is None
    assert [r["state"] for r in host.store.warm_rows()] == ["ready", "ready"]


def test_a_refused_job_gives_its_warm_container_back(make_host):
    host = _filled(make_host)
    resp = host.post("/jobs", {"kind": "worker", "command": "x", "upload_id": "up_" + "a" * 16})
    assert resp.status_code == 400
    assert [r["state"] for r in host.store.warm_rows()] == ["ready", "ready"]


def test_kill_and_timeout_of_a_warm_job(make_host):
    host = _filled(make_host, kill_grace_s=0.05)
    job = host.job("sleep 60", timeout_s=0.2)
    killed = host.job("sleep 60")
    host.post(f"/jobs/{killed['id']}/kill")
    assert (killed["id"], "TERM") in host.runtime.signals
    time.sleep(0.3)
    host.reaper.tick()
    assert (job["id"], "TERM") in host.runtime.signals
    time.sleep(0.1)
    host.reaper.tick()
    host.reaper.tick()
    assert host.store.get_job(job["id"])["status"] == "timed_out"


def test_sub_agent_warm_container_gets_prompt_and_host_agent_env(make_host):
    host = _filled(
        make_host,
        warm_pool={"sub_agent": 1},
        sub_agent={"command": ["/agent"], "env": {"ANTHROPIC_BASE_URL": "https://host.example"}},
    )
    row = host.store.warm_rows()[0]
    assert host.runtime.specs[row["id"]].env["ANTHROPIC_BASE_URL"] == "https://host.example"
    resp = host.post("/jobs", {"kind": "sub_agent", "prompt": "do it", "env": {"X": "1"}})
    job = resp.get_json()["job"]
    assert job["id"] == row["id"] and job["status"] == "running"
    argv, env = decode_command((_control(host, job["id"]) / "command").read_bytes())
    assert argv == ["/agent"]
    assert env == {
        "FLASHPODS_PROMPT": "do it",
        "X": "1",
        "ANTHROPIC_BASE_URL": "https://host.example",
    }


def test_reconcile_after_a_crash(make_host):
    host = _filled(make_host)
    gone, kept = (r["id"] for r in host.store.warm_rows())
    host.runtime.boxes.pop(gone)  # a ready container vanished
    host.runtime.boxes["wk_orphan"] = {"Names": ["wk_orphan"], "State": "running"}  # no row
    host.store.add_warm("job_creatingaaaa", "worker", host.config.images["worker"])
    host.runtime.boxes["job_creatingaaaa"] = {"Names": ["job_creatingaaaa"], "State": "running"}
    host.store.add_warm("job_takenaaaaaaa", "worker", host.config.images["worker"])
    host.store.set_warm(
        "job_takenaaaaaaa", ("creating",), state="taken", taken_at=time.time() - 3600
    )
    host.runtime.boxes["job_takenaaaaaaa"] = {"Names": ["job_takenaaaaaaa"], "State": "running"}
    host.reaper.tick()
    ids = {r["id"]: r["state"] for r in host.store.warm_rows()}
    assert gone not in ids and "job_takenaaaaaaa" not in ids
    assert ids["job_creatingaaaa"] == "ready" and ids[kept] == "ready"
    assert "wk_orphan" in host.runtime.removed and "job_takenaaaaaaa" in host.runtime.removed
    assert gone in host.registrar.unregistered


def test_a_claimed_job_whose_starter_died_is_handed_over_by_the_reaper(make_host):
    host = _filled(make_host)
    warm_id = host.store.warm_rows()[0]["id"]
    record = {
        "id": "job_notwarmaaaaa", "kind": "worker", "command": "echo late", "prompt": None,
        "upload_id": None, "image": host.config.images["worker"], "env": {},
        "timeout_s": 60, "resources": {}, "artifacts_glob": None,
    }  # fmt: skip
    image = host.config.images["worker"]
    job, took_warm = host.store.submit(record, 100, claim_cap=4, warm=("worker", image))
    assert took_warm and job["id"] == warm_id and job["status"] == "starting"
    # ... and the API died here, before it handed the command over
    host.store.transition(warm_id, ("starting",), claimed_at=time.time() - 10)
    host.reaper.tick()
    assert host.store.get_job(warm_id)["status"] == "running"
    argv, _env = decode_command((_control(host, warm_id) / "command").read_bytes())
    assert argv == ["sh", "-c", "echo late"]


def test_a_lowered_target_removes_surplus_ready_containers(make_host, tmp_path):
    host = _filled(make_host)
    host.engine.warm.targets = {"worker": 1}
    host.reaper.tick()
    assert len(host.store.warm_rows()) == 1


def test_command_encoding_round_trips_and_refuses_nul():
    data = warm.encode_command(["sh", "-c", "a b"], {"K": "v=1"})
    assert decode_command(data) == (["sh", "-c", "a b"], {"K": "v=1"})
    with pytest.raises(ValueError):
        warm.encode_command(["sh", "-c", "a\0b"], {})


@pytest.mark.parametrize(
    ("pool", "says"),
    [
        ({"nope": 1}, "unknown kind"),
        ({"worker": -1}, "whole number"),
        ({"worker": 1000}, "whole number"),
        ({"worker": True}, "whole number"),
        ([], "JSON object"),
    ],
)
def test_bad_warm_pool_config_names_the_fix(tmp_path, pool, says):
    with pytest.raises(ConfigError, match=says):
        from_dict({"warm_pool": pool})


def test_a_refused_submit_rolls_the_warm_take_back(make_host):
    host = _filled(make_host)
    upload = host.post("/uploads").get_json()["upload_id"]
    host.store.set_upload(upload, "reserved", state="used")  # taken by a racing request
    record = {
        "id": "job_racer", "kind": "worker", "command": "true", "prompt": None,
        "upload_id": upload, "image": host.config.images["worker"], "env": {},
        "timeout_s": 60, "resources": {}, "artifacts_glob": None,
    }  # fmt: skip
    with pytest.raises(UploadUnavailable):
        host.store.submit(record, 100, claim_cap=4, warm=("worker", record["image"]))
    assert [r["state"] for r in host.store.warm_rows()] == ["ready", "ready"]
    assert host.store.get_job("job_racer") is None
