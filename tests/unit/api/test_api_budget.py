"""A job's own model budget in the API: POST /jobs validation, the file the proxy reads,
the reaper stopping a job at its budget (TERM, then KILL), and the jobs table's new
column added in place to an older database."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import time
from pathlib import Path

import pytest
from flashpods_api.store import Store


@pytest.fixture
def metered(make_host, tmp_path):
    """A host that meters model calls: usage and budget directories, host default 1000."""

    def make(host_budget: int | None = 1000, **overrides):
        n = len(list(tmp_path.glob("m*")))
        usage, budgets = tmp_path / f"m{n}" / "usage", tmp_path / f"m{n}" / "budgets"
        return make_host(
            storage_extra={"usage": str(usage), "budgets": str(budgets)},
            limits={"job_budget_tokens": host_budget} if host_budget else {},
            **overrides,
        )

    return make


def write_usage(host, job_id: str, used_in: int, used_out: int, exhausted: bool = False) -> None:
    usage = {
        "requests": 2, "input_tokens": used_in, "output_tokens": used_out,
        "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
        "budget_tokens": None, "budget_exhausted": exhausted,
    }  # fmt: skip
    (Path(host.config.storage["usage"]) / f"{job_id}.json").write_text(json.dumps(usage))


# (budget_tokens asked, the code, words of the error that say what to change)
BAD_BUDGETS = [
    (0, "bad_budget_tokens", "positive whole number"),
    (-5, "bad_budget_tokens", "positive whole number"),
    (1.5, "bad_budget_tokens", "positive whole number"),
    ("100", "bad_budget_tokens", "positive whole number"),
    (True, "bad_budget_tokens", "positive whole number"),
    ({"tokens": 1}, "bad_budget_tokens", "positive whole number"),
    (1001, "bad_budget_tokens", "above this host's budget (limits.job_budget_tokens) of 1000"),
    (10**30, "bad_budget_tokens", "ask for 1000 or fewer"),
]


@pytest.mark.parametrize(("value", "code", "words"), BAD_BUDGETS)
def test_a_bad_budget_is_refused_with_what_to_change(metered, value, code, words):
    host = metered()
    resp = host.post("/jobs", {"kind": "worker", "command": "true", "budget_tokens": value})
    assert resp.status_code == 400
    body = resp.get_json()
    assert body["code"] == code and words in body["error"], body
    assert host.store.job_ids() == set()


def test_a_budget_on_a_host_that_does_not_meter_is_refused(host):
    resp = host.post("/jobs", {"kind": "worker", "command": "true", "budget_tokens": 10})
    assert resp.status_code == 400
    assert resp.get_json()["code"] == "budget_not_metered"
    assert "leave it out" in resp.get_json()["error"]


def test_without_a_host_default_any_positive_budget_is_taken(metered):
    host = metered(host_budget=None)
    assert host.job("true", budget_tokens=10**9)["budget_tokens"] == 10**9
    resp = host.post("/jobs", {"kind": "worker", "command": "true", "budget_tokens": 2**60})
    assert resp.status_code == 400 and "the largest budget" in resp.get_json()["error"]


def test_the_budget_is_stored_shown_and_written_for_the_proxy_before_the_start(metered):
    host = metered()
    job = host.job("sleep 100", budget_tokens=300)
    none = host.job("sleep 100")
    assert job["budget_tokens"] == 300 and none["budget_tokens"] is None
    assert host.get(f"/jobs/{job['id']}").get_json()["job"]["budget_tokens"] == 300
    assert host.get("/jobs").get_json()["jobs"][1]["budget_tokens"] == 300
    assert host.store.get_job(job["id"])["status"] == "running"
    budgets = Path(host.config.storage["budgets"])
    written = budgets / f"{job['id']}.json"
    assert json.loads(written.read_text()) == {"job_id": job["id"], "budget_tokens": 300}
    assert stat.S_IMODE(os.lstat(written).st_mode) == 0o640
    # A job with no budget of its own gets no file (the proxy applies the host's), and
    # no temporary file is left beside.
    assert sorted(p.name for p in budgets.iterdir()) == [written.name]


def test_the_reaper_stops_a_job_at_its_budget_notice_term_then_kill(metered):
    host = metered(kill_grace_s=0.2)
    job = host.job("sleep 100", budget_tokens=100)
    other = host.job("sleep 100", budget_tokens=500)
    write_usage(host, job["id"], 30, 60)  # 90 < 100: runs on
    write_usage(host, other["id"], 30, 60)
    host.reaper.tick()
    assert host.runtime.signals == []
    write_usage(host, job["id"], 30, 75)  # 105 >= 100
    host.reaper.tick()
    # The notice first: the proxy refuses its model calls, no signal yet (an agent then
    # ends on that refusal and its own summary says budget_exhausted).
    assert host.runtime.signals == []
    assert host.store.get_job(job["id"])["stop_reason"] == "budget_exhausted"
    time.sleep(0.12)  # past the notice (half of kill_grace_s)
    host.reaper.tick()
    assert host.runtime.signals == [(job["id"], "TERM")]
    time.sleep(0.13)
    host.reaper.tick()  # grace over: SIGKILL (the fake exits with 137)
    assert (job["id"], "KILL") in host.runtime.signals
    host.reaper.tick()
    final = host.get(f"/jobs/{job['id']}").get_json()["job"]
    assert (final["status"], final["stop_reason"]) == ("failed", "budget_exhausted")
    assert final["error"].startswith("budget_exhausted: ") and "of 100 input" in final["error"]
    assert "larger budget_tokens (up to this host's 1000" in final["error"]
    # The usage stays; the budget file has gone with the job.
    assert final["usage"]["output_tokens"] == 75
    assert not (Path(host.config.storage["budgets"]) / f"{job['id']}.json").exists()
    assert host.store.get_job(other["id"])["status"] == "running"


def test_the_host_default_and_the_proxys_own_verdict_stop_a_job_too(metered):
    host = metered(host_budget=50)
    plain = host.job("sleep 100")  # no budget of its own: the host's 50
    flagged = host.job("sleep 100")
    write_usage(host, plain["id"], 20, 30)
    write_usage(host, flagged["id"], 1, 1, exhausted=True)  # the proxy said so
    host.reaper.tick()
    assert {host.store.get_job(j["id"])["stop_reason"] for j in (plain, flagged)} == {
        "budget_exhausted"
    }


def test_a_hostile_usage_file_stops_nothing_and_breaks_nothing(metered):
    host = metered()
    job = host.job("sleep 100", budget_tokens=10)
    path = Path(host.config.storage["usage"]) / f"{job['id']}.json"
    for junk in (b"[1,2]", b"{" * 5000, json.dumps({"input_tokens": "999"}).encode()):
        path.write_bytes(junk)
        host.reaper.tick()
    assert host.store.get_job(job["id"])["stop_reason"] is None


def test_storage_budgets_needs_storage_usage(make_host, tmp_path):
    from flashpods_api.config import ConfigError

    with pytest.raises(ConfigError, match="storage.budgets needs storage.usage"):
        make_host(storage_extra={"budgets": str(tmp_path / "b")})


OLD_JOBS = """CREATE TABLE jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, instance TEXT NOT NULL,
    kind TEXT NOT NULL, status TEXT NOT NULL, command TEXT, prompt TEXT, image TEXT NOT NULL,
    env TEXT NOT NULL, upload_id TEXT, timeout_s REAL NOT NULL, resources TEXT NOT NULL,
    artifacts_glob TEXT, created_at REAL NOT NULL, claimed_at REAL, started_at REAL,
    finished_at REAL, exit_code INTEGER, error TEXT, log_bytes INTEGER,
    artifacts_expire_at REAL, logs_expire_at REAL, limits_not_applied TEXT,
    stop_requested_at REAL, stop_reason TEXT, kill_sent_at REAL,
    log_capped INTEGER NOT NULL DEFAULT 0, workspace_changes TEXT,
    artifacts_deleted INTEGER NOT NULL DEFAULT 0, logs_deleted INTEGER NOT NULL DEFAULT 0)"""


def test_an_older_database_gains_the_column_in_place_and_keeps_its_rows(tmp_path):
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as conn:  # the jobs table as the last release made it
        conn.execute(OLD_JOBS)
        conn.execute(
            "INSERT INTO jobs (id, instance, kind, status, command, image, env, timeout_s,"
            " resources, created_at, exit_code) VALUES ('job_aaaaaaaaaaaa', 'unit', 'worker',"
            " 'succeeded', 'echo old', 'i', '{}', 5, '{}', 1.0, 0)"
        )
    conn.close()
    for _ in range(2):  # a second start finds the column there and adds nothing
        store = Store(str(db), "unit")
        old = store.get_job("job_aaaaaaaaaaaa")
        assert old is not None
        assert (old["command"], old["status"], old["exit_code"]) == ("echo old", "succeeded", 0)
        assert old["budget_tokens"] is None
        store.close()
    store = Store(str(db), "unit")
    new, _ = store.submit(
        {"id": "job_bbbbbbbbbbbb", "kind": "worker", "command": "x", "image": "i", "env": {},
         "timeout_s": 5, "resources": {}, "budget_tokens": 42}, 10)  # fmt: skip
    assert new["budget_tokens"] == 42
    store.close()
    with sqlite3.connect(db) as conn:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(jobs)")]
    conn.close()
    assert columns.count("budget_tokens") == 1 and columns[-1] == "budget_tokens"


def test_a_warm_job_has_its_budget_written_before_its_command_is_handed_over(metered, monkeypatch):
    from flashpods_api import warm

    host = metered(warm_pool={"worker": 1})
    host.reaper.tick()
    ready = host.store.warm_rows()[0]["id"]  # made before the job existed
    seen: list[bool] = []
    hand_over = warm.WarmPool.hand_over

    def spy(self, job):
        seen.append((Path(host.config.storage["budgets"]) / f"{job['id']}.json").exists())
        return hand_over(self, job)

    monkeypatch.setattr(warm.WarmPool, "hand_over", spy)
    job = host.job("sleep 100", budget_tokens=70)
    assert job["id"] == ready and job["status"] == "running"
    assert seen == [True]


def test_a_job_that_failed_on_its_own_at_its_budget_says_why(metered):
    """The proxy's refusal can end an agent before the reaper's next look records the
    stop: the job's end then finds the budget used up and records that as the reason.
    A job that used its budget and still succeeded stays succeeded."""
    host = metered()
    failed, fine = host.job("x", budget_tokens=100), host.job("y", budget_tokens=100)
    for job in (failed, fine):
        write_usage(host, job["id"], 40, 60)  # 100 >= 100
    host.runtime.exit(failed["id"], 1)
    host.runtime.exit(fine["id"], 0)
    host.engine.finish(host.store.get_job(failed["id"]), 1)
    host.engine.finish(host.store.get_job(fine["id"]), 0)
    ended = host.store.get_job(failed["id"])
    assert (ended["status"], ended["stop_reason"]) == ("failed", "budget_exhausted")
    assert ended["error"].startswith("budget_exhausted: ")
    ok = host.store.get_job(fine["id"])
    assert (ok["status"], ok["stop_reason"], ok["error"]) == ("succeeded", None, None)
