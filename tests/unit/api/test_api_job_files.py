"""job_files.py: a job's directories, made without following links, removed whole."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from flashpods_api import ids, jobtree


def test_paths_check_the_ids_they_are_made_of(host):
    files = host.engine.files
    assert files.workspace("job_aaaaaaaaaaaa").parent == host.config.workspaces_dir
    for make, bad in ((files.workspace, "job_../../etc"), (files.base_dir, "up_../../x")):
        with pytest.raises(ids.BadId):
            make(bad)


def test_prepare_dirs_refuses_a_live_log_that_is_not_a_regular_file(host):
    from flashpods_api.job_start import StartError

    job_id = "job_aaaaaaaaaaaa"
    logs_dir = host.config.logs_dir
    logs_dir.mkdir(exist_ok=True)
    fifo = logs_dir / f"{job_id}.ctr.log"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # so the write end opens at all
    try:
        with pytest.raises(StartError, match="live log is not a regular file"):
            host.engine.files.prepare_dirs(job_id)
    finally:
        os.close(reader)


def test_prepare_dirs_does_not_follow_a_planted_link(host, tmp_path):
    job_id = "job_aaaaaaaaaaaa"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    before = elsewhere.stat().st_mode
    os.symlink(elsewhere, host.config.workspaces_dir / job_id)
    with pytest.raises(OSError):
        host.engine.files.prepare_dirs(job_id)
    assert elsewhere.stat().st_mode == before  # no chmod through the link


def test_locked_files_are_normalized_before_removal(host, monkeypatch):
    job = host.job()
    ws = Path(host.raw["storage"]["workspaces"]) / job["id"]
    (ws / "locked").mkdir()
    calls = []

    def fake_remove(path, budget_s=jobtree.REMOVE_BUDGET_S):
        calls.append(path)
        if len(calls) == 1:  # root ignores modes here: the first try is told it was denied
            return jobtree.Removal(False, denied=True, error="locked: unreadable")
        return real_remove(path)

    real_remove = jobtree.remove
    monkeypatch.setattr(jobtree, "remove", fake_remove)
    host.engine.files.remove_tree(ws)
    assert host.runtime.normalized == [str(ws)] and not ws.exists()
