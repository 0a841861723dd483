"""One job cannot stop the reaper (issue 14): its errors are its own; /healthz sees no progress."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from flashpods_api import jobs as jobs_module
from flashpods_api import logs, reaper, workspace_diff
from flashpods_api.ids import BadId


def test_a_job_whose_end_keeps_failing_neither_blocks_the_others_nor_stays_running(
    host, monkeypatch
):
    bad, good = host.job("bad"), host.job("good")
    host.runtime.exit(bad["id"], 0)
    host.runtime.exit(good["id"], 0)
    real = logs.finalize

    def finalize(logs_dir, job_id, cap):
        if job_id == bad["id"]:
            raise RecursionError("maximum recursion depth exceeded")
        return real(logs_dir, job_id, cap)

    monkeypatch.setattr(jobs_module.logs, "finalize", finalize)
    host.reaper.tick()  # before the fix: the tick raised here and `good` never ended
    assert host.store.get_job(good["id"])["status"] == "succeeded"
    assert host.store.get_job(bad["id"])["status"] == "running"
    for _ in range(reaper.MAX_JOB_FAILURES - 1):
        host.reaper.tick()
    ended = host.store.get_job(bad["id"])
    assert ended["status"] == "failed"
    assert "RecursionError" in ended["error"] and "could not record" in ended["error"]
    assert bad["id"] not in host.runtime.boxes
    assert host.client.get("/healthz").status_code == 200


def test_healthz_goes_red_when_ticks_start_but_none_gets_through(host, monkeypatch):
    host.reaper.tick()
    assert host.client.get("/healthz").status_code == 200

    def broken() -> None:
        raise RuntimeError("the warm pool exploded")

    monkeypatch.setattr(host.engine.warm, "refill", broken)
    for _ in range(3):
        with pytest.raises(RuntimeError):
            host.reaper.tick()
        host.reaper._record_tick_error("RuntimeError: the warm pool exploded")
    # The start heartbeat is fresh; the last completed tick is an hour older.
    with host.store._tx(write=True):
        host.store._exec(
            "UPDATE heartbeats SET at = at - 3600 WHERE name = :n",
            n=f"{host.store.instance}:reaper_done",
        )
    body = host.client.get("/healthz").get_json()
    assert body["failing"] == ["reaper"], body
    assert "no tick has got through" in body["error"] and "warm pool exploded" in body["error"]
    monkeypatch.undo()
    host.reaper.tick()
    assert host.client.get("/healthz").status_code == 200


def test_ids_read_back_from_the_database_are_checked_before_they_become_paths(host):
    for bad in ("../../etc", "job_AAAAAAAAAAAA", "job_aaaaaaaaaaaa/..", ""):
        with pytest.raises(BadId):
            host.engine.files.workspace(bad)
        with pytest.raises(BadId):
            logs.final_log_path(host.config.logs_dir, bad)
    with pytest.raises(BadId):
        host.engine.files.base_dir("up_../../x")


def test_a_planted_log_tmp_link_or_foreign_final_log_is_never_written_through(tmp_path):
    job_id = "job_aaaaaaaaaaaa"
    target = tmp_path / "victim"
    target.write_text("precious\n")
    (tmp_path / f"{job_id}.ctr.log").write_text("T stdout F hello\n")
    os.symlink(target, tmp_path / f".{job_id}.log.tmp")
    os.symlink(target, tmp_path / f"{job_id}.log")
    assert logs.finalize(tmp_path, job_id, 1000) == (6, False)
    assert target.read_text() == "precious\n"
    final = tmp_path / f"{job_id}.log"
    assert not final.is_symlink() and final.read_text() == "hello\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [final.name, "victim"]


def test_a_fifo_as_a_log_is_treated_as_missing_not_waited_on(tmp_path):
    job_id = "job_aaaaaaaaaaaa"
    os.mkfifo(tmp_path / f"{job_id}.ctr.log")
    assert logs.decoded_size(tmp_path / f"{job_id}.ctr.log").decoded == 0
    assert logs.read(tmp_path, job_id, 0, 100, 1000) == b""
    assert logs.finalize(tmp_path, job_id, 1000) == (0, False)


def test_the_workspace_record_replaces_a_planted_entry_without_following_it(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "files").mkdir(parents=True)
    work = tmp_path / "work"
    work.mkdir()
    (work / "new.txt").write_text("n\n")
    artifacts_root = tmp_path / "artifacts"
    artifacts_root.mkdir()
    out = artifacts_root / "job_aaaaaaaaaaaa.workspace"
    os.symlink(elsewhere, out)
    (artifacts_root / ".job_aaaaaaaaaaaa.workspace.dead.tmp").mkdir()  # a crashed attempt
    summary = workspace_diff.record(None, work, out, byte_cap=10**6)
    assert summary["added"] == 1
    assert not out.is_symlink() and (out / "files" / "new.txt").read_text() == "n\n"
    assert json.loads((out / "changes.json").read_text())["added"] == ["new.txt"]
    assert list((elsewhere / "files").iterdir()) == []
    assert sorted(p.name for p in artifacts_root.iterdir()) == ["job_aaaaaaaaaaaa.workspace"]
    assert (out.stat().st_mode & 0o777) == 0o750  # the job uid (group) cannot write in it


def _chain(root, depth: int) -> None:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(depth):
        os.mkdir("d", dir_fd=fd)
        nxt = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = nxt
    os.close(fd)


def test_a_tree_too_deep_to_walk_fails_the_job_by_name_and_is_removed(host):
    job = host.job()
    storage = host.raw["storage"]
    _chain(Path(storage["artifacts"]) / job["id"], 1100)
    _chain(Path(storage["workspaces"]) / job["id"], 1100)
    host.runtime.exit(job["id"], 0)
    host.reaper.tick()
    ended = host.store.get_job(job["id"])
    assert ended["status"] == "failed"
    assert "/artifacts nested deeper than 256 levels" in ended["error"], ended["error"]
    assert "deeper than 256 levels" in ended["workspace_changes"]["incomplete"]
    assert not (Path(storage["workspaces"]) / job["id"]).exists()
    resp = host.get(f"/jobs/{job['id']}/artifacts")
    assert resp.status_code == 200
    assert any("deeper than" in s["reason"] for s in resp.get_json()["skipped"])
    assert host.engine.files.remove_tree(Path(storage["artifacts"]) / job["id"])
