"""jobs.py and job_start.py: starting (cold), the start's error sentences, kill, finish."""

from __future__ import annotations

import os

import pytest
from flashpods_api.job_start import StartError, error_sentence, take_upload
from flashpods_api.registrar import RegistrarError
from flashpods_api.runtime import PodmanError

UPLOAD = "up_aaaaaaaaaaaaaaaa"


def test_take_upload_moves_it_once_and_is_idempotent(tmp_path):
    source, target = tmp_path / "upload", tmp_path / "base"
    source.mkdir()
    (source / "f").write_text("x")
    take_upload(source, target, UPLOAD)
    take_upload(source, target, UPLOAD)  # a restart after a crash: moved already
    assert (target / "f").read_text() == "x" and not source.exists()


def test_take_upload_says_when_the_upload_is_gone(tmp_path):
    with pytest.raises(StartError, match=f"The upload {UPLOAD} is gone from the host"):
        take_upload(tmp_path / "missing", tmp_path / "base", UPLOAD)


@pytest.mark.parametrize("plant", ["file", "link"])
def test_take_upload_refuses_anything_but_a_directory(tmp_path, plant):
    target = tmp_path / "base"
    if plant == "file":
        target.write_text("not a dir")
    else:
        (tmp_path / "real").mkdir()
        os.symlink(tmp_path / "real", target)  # Podman would mount what the link points at
    with pytest.raises(StartError, match=f"The upload {UPLOAD} is not a directory"):
        take_upload(tmp_path / "upload", target, UPLOAD)


@pytest.mark.parametrize(
    ("exc", "sentence"),
    [
        (StartError("Exactly this."), "Exactly this."),
        (PodmanError("podman run failed: no image"), "The container could not be started: "),
        (PermissionError(13, "Permission denied", "/x"), "directories could not be prepared"),
        (RegistrarError("spire-server is down"), "SPIFFE identity could not be registered"),
        (ValueError("odd"), "The job could not be started: ValueError: odd."),
    ],
)
def test_each_start_failure_has_its_sentence(exc, sentence):
    assert sentence in error_sentence(exc)


def test_podman_unreachable_puts_a_claimed_job_back_in_the_queue(host):
    host.runtime.down = True
    job = host.job()
    assert job["status"] == "queued"  # its place kept, not failed
    host.runtime.down = False
    assert host.engine.start_next() == [job["id"]]
    assert host.store.get_job(job["id"])["status"] == "running"


def test_kill_of_a_queued_job_ends_it_without_a_container(make_host):
    host = make_host(max_concurrent_jobs=1)
    host.job("sleep 100")
    queued = host.job("echo never")
    killed = host.engine.kill(queued["id"])
    assert killed["status"] == "killed" and queued["id"] not in host.runtime.specs


def test_finish_records_the_exit_and_drops_identity_and_workspace(host):
    job = host.job("true")
    row = host.store.get_job(job["id"])
    host.engine.finish(row, 0)
    done = host.store.get_job(job["id"])
    assert done["status"] == "succeeded" and done["exit_code"] == 0
    assert job["id"] in host.registrar.unregistered
    assert not host.engine.files.workspace(job["id"]).exists()
