"""Every route of the API against a real SQLite store and a fake Podman."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest
from api_fakes import TOKEN
from flashpods_api.runtime import PodmanError, run_args


def test_upload_reserves_a_directory_and_rsync_url(host):
    resp = host.post("/uploads")
    assert resp.status_code == 201
    body = resp.get_json()
    assert body["upload_id"].startswith("up_") and len(body["upload_id"]) == 19
    assert body["rsync_url"] == f"rsync://127.0.0.1:8873/uploads/{body['upload_id']}/"
    assert "link_dest" not in body
    path = Path(host.raw["storage"]["uploads"]) / body["upload_id"]
    assert path.is_dir() and (path.stat().st_mode & 0o7777) == 0o2770
    assert host.store.get_upload(body["upload_id"])["state"] == "reserved"


def test_upload_with_a_used_basis_gets_link_dest(host):
    first = host.post("/uploads").get_json()["upload_id"]
    (Path(host.raw["storage"]["uploads"]) / first / "a.txt").write_text("hello\n")
    host.job("cat a.txt", upload_id=first)
    assert (Path(host.raw["storage"]["uploads"]) / ".bases" / first / "a.txt").exists()
    second = host.post("/uploads", {"basis": first}).get_json()
    assert second["link_dest"] == f"../.bases/{first}/"
    # A basis never used by a job (no kept base) is simply ignored: a full upload.
    unused = host.post("/uploads").get_json()["upload_id"]
    third = host.post("/uploads", {"basis": unused}).get_json()
    assert "link_dest" not in third


def test_create_worker_starts_it_on_the_fast_path(host):
    job = host.job(
        "echo hi",
        env={"GREETING": "hello"},
        timeout_s=30,
        resources={"cpus": 1, "memory": 256, "pids": 64},
    )
    assert job["status"] == "running"
    assert job["id"].startswith("job_") and job["kind"] == "worker"
    assert job["limits_not_applied"].startswith("Limits")
    spec = host.runtime.specs[job["id"]]
    assert spec.argv == ["/flashpods/bin/flashpods-init", "--", "sh", "-c", "echo hi"]
    assert spec.env["GREETING"] == "hello" and spec.env["FLASHPODS_JOB_ID"] == job["id"]
    assert spec.env["HOME"] == "/tmp/home" and spec.env["TMPDIR"] == "/tmp"
    assert host.registrar.registered == [(job["id"], "worker")]
    for sub in ("workspaces", "artifacts"):
        assert (Path(host.raw["storage"][sub]) / job["id"]).is_dir()
    ctr_log = Path(host.raw["storage"]["logs"]) / f"{job['id']}.ctr.log"
    assert ctr_log.exists() and (ctr_log.stat().st_mode & 0o777) == 0o660


def test_create_sub_agent_passes_the_prompt_in_the_environment(make_host):
    host = make_host(sub_agent={"command": ["/agent/run", "--fast"], "env": {"AGENT_MODE": "x"}})
    resp = host.post("/jobs", {"kind": "sub_agent", "prompt": "fix the bug"})
    assert resp.status_code == 201
    job = resp.get_json()["job"]
    spec = host.runtime.specs[job["id"]]
    assert spec.argv == ["/flashpods/bin/flashpods-init", "--", "/agent/run", "--fast"]
    assert spec.env["FLASHPODS_PROMPT"] == "fix the bug" and spec.env["AGENT_MODE"] == "x"
    assert spec.image == "localhost/flashpods-agent:latest"
    assert host.registrar.registered == [(job["id"], "sub_agent")]


def test_over_the_cap_jobs_wait_in_fifo_order_with_a_position(make_host):
    host = make_host(max_concurrent_jobs=1)
    first = host.job("sleep 1")
    second = host.job("echo 2")
    third = host.job("echo 3")
    assert first["status"] == "running"
    assert (second["status"], second["queue_position"]) == ("queued", 1)
    assert (third["status"], third["queue_position"]) == ("queued", 2)
    got = host.get(f"/jobs/{third['id']}").get_json()["job"]
    assert got["queue_position"] == 2


def test_start_failure_is_recorded_with_podman_s_reason(host):
    host.runtime.fail_run = "Error: image not known"
    job = host.job()
    assert job["status"] == "failed"
    assert "could not be started" in job["error"] and "image not known" in job["error"]
    assert job["finished_at"] is not None


def test_registrar_failure_fails_the_job_before_any_container(host):
    host.registrar.fail = "spire-server is not answering"
    job = host.job()
    assert job["status"] == "failed" and "SPIFFE identity" in job["error"]
    assert host.runtime.specs == {}


def test_list_jobs_newest_first_with_filters_and_cursor(make_host):
    host = make_host(max_concurrent_jobs=1)
    ids = [host.job(f"echo {n}")["id"] for n in range(5)]
    listed = host.get("/jobs?limit=2").get_json()
    assert [j["id"] for j in listed["jobs"]] == ids[::-1][:2]
    rest = host.get(f"/jobs?limit=2&cursor={listed['next_cursor']}").get_json()
    assert [j["id"] for j in rest["jobs"]] == ids[::-1][2:4]
    last = host.get(f"/jobs?limit=2&cursor={rest['next_cursor']}").get_json()
    assert [j["id"] for j in last["jobs"]] == [ids[0]]
    queued = host.get("/jobs?status=queued").get_json()["jobs"]
    assert {j["id"] for j in queued} == set(ids[1:])
    assert host.get("/jobs?kind=sub_agent").get_json()["jobs"] == []


def test_get_unknown_job_is_404(host):
    resp = host.get("/jobs/job_aaaaaaaaaaaa")
    assert resp.status_code == 404
    assert resp.get_json()["code"] == "unknown_job"


def test_kill_queued_dequeues_and_is_idempotent(make_host):
    host = make_host(max_concurrent_jobs=1)
    host.job("sleep 100")
    queued = host.job("echo never")
    first = host.post(f"/jobs/{queued['id']}/kill").get_json()["job"]
    assert first["status"] == "killed" and first["finished_at"]
    again = host.post(f"/jobs/{queued['id']}/kill")
    assert again.status_code == 200 and again.get_json()["job"]["status"] == "killed"
    assert queued["id"] not in host.runtime.specs


def test_kill_running_sends_term_and_the_reaper_records_killed(host):
    job = host.job("sleep 100")
    resp = host.post(f"/jobs/{job['id']}/kill").get_json()["job"]
    assert resp["stop_requested"] is True and resp["status"] == "running"
    assert (job["id"], "TERM") in host.runtime.signals
    host.runtime.exit(job["id"], 143)
    host.reaper.tick()
    final = host.get(f"/jobs/{job['id']}").get_json()["job"]
    assert (final["status"], final["exit_code"]) == ("killed", 143)
    assert job["id"] not in host.runtime.boxes  # removed after the exit was recorded


def test_logs_by_offset_and_limit(host):
    job = host.job()
    host.write_ctr_log(
        job["id"],
        [
            "2026-01-01T00:00:00.000000000+00:00 stdout F hello",
            "2026-01-01T00:00:00.000000001+00:00 stderr F oops",
            "2026-01-01T00:00:00.000000002+00:00 stdout P part",
            "2026-01-01T00:00:00.000000003+00:00 stdout F ial",
        ],
    )
    body = host.get(f"/jobs/{job['id']}/logs").get_json()
    assert (
        body["data"] == "hello\noops\npartial\n"
        and body["next_offset"] == 19
        and body["final"] is False
    )
    body = host.get(f"/jobs/{job['id']}/logs?offset=6&limit=5").get_json()
    assert (body["data"], body["next_offset"]) == ("oops\n", 11)
    raw = host.get(f"/jobs/{job['id']}/logs?offset=11&format=raw")
    assert raw.data == b"partial\n" and raw.headers["X-Flashpods-Next-Offset"] == "19"
    host.runtime.exit(job["id"], 0)
    host.reaper.tick()
    done = host.get(f"/jobs/{job['id']}/logs?offset=0").get_json()
    assert done["data"] == "hello\noops\npartial\n" and done["final"] is True
    assert host.get(f"/jobs/{job['id']}").get_json()["job"]["log_bytes"] == 19
    assert not (Path(host.raw["storage"]["logs"]) / f"{job['id']}.ctr.log").exists()


def test_logs_follow_streams_until_the_job_is_final(host):
    job = host.job()
    host.write_ctr_log(job["id"], ["2026-01-01T00:00:00.0+00:00 stdout F line one"])
    host.runtime.exit(job["id"], 0)
    host.reaper.tick()
    resp = host.get(f"/jobs/{job['id']}/logs?follow=1&offset=5")
    assert resp.status_code == 200 and resp.data == b"one\n"


def test_log_chunks_never_split_a_utf8_character(host):
    job = host.job()
    host.write_ctr_log(job["id"], ["2026-01-01T00:00:00.0+00:00 stdout F aé"])
    body = host.get(f"/jobs/{job['id']}/logs?limit=2").get_json()
    assert (body["data"], body["next_offset"]) == ("a", 1)


def _plant(host, job_id: str) -> Path:
    root = Path(host.raw["storage"]["artifacts"]) / job_id
    (root / "sub").mkdir(parents=True, exist_ok=True)
    (root / "report.txt").write_text("report\n")
    (root / "sub" / "data.bin").write_bytes(os.urandom(3000))
    os.symlink(host.raw["db_path"], root / "db-link")
    os.symlink(host.raw["token_file"], root / "sub" / "token-link")
    os.symlink("/", root / "rootdir")
    os.mkfifo(root / "pipe")
    return root


def test_artifacts_list_tar_and_file_serve_only_regular_files(host):
    job = host.job()
    root = _plant(host, job["id"])
    body = host.get(f"/jobs/{job['id']}/artifacts").get_json()
    files = {a["path"]: a for a in body["artifacts"]}
    assert set(files) == {"report.txt", "sub/data.bin"}
    assert files["report.txt"]["size"] == 7 and len(files["report.txt"]["sha256"]) == 64
    skipped = {s["path"]: s["reason"] for s in body["skipped"]}
    assert skipped == {
        "db-link": "symlink",
        "sub/token-link": "symlink",
        "rootdir": "symlink",
        "pipe": "fifo",
    }

    tar_bytes = host.get(f"/jobs/{job['id']}/artifacts.tar").data
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        assert sorted(tar.getnames()) == ["report.txt", "sub/data.bin"]
        assert tar.extractfile("sub/data.bin").read() == (root / "sub" / "data.bin").read_bytes()

    assert host.get(f"/jobs/{job['id']}/artifacts/report.txt").data == b"report\n"
    for path in ("db-link", "sub/token-link", "rootdir/etc/passwd", "pipe"):
        resp = host.get(f"/jobs/{job['id']}/artifacts/{path}")
        assert resp.status_code == 404, path
        assert TOKEN not in resp.get_data(as_text=True)
    assert host.get(f"/jobs/{job['id']}/artifacts/nothing").get_json()["code"] == "unknown_artifact"


def test_artifacts_glob_filters_the_listing(host):
    job = host.job(artifacts_glob="*.txt")
    _plant(host, job["id"])
    paths = [a["path"] for a in host.get(f"/jobs/{job['id']}/artifacts").get_json()["artifacts"]]
    assert paths == ["report.txt"]


def test_workspace_changes_come_back_under_workspace_prefix(host):
    upload = host.post("/uploads").get_json()["upload_id"]
    up = Path(host.raw["storage"]["uploads"]) / upload
    (up / "keep.txt").write_text("same\n")
    (up / "edit.txt").write_text("old\n")
    (up / "gone.txt").write_text("bye\n")
    job = host.job("edit", upload_id=upload)
    ws = Path(host.raw["storage"]["workspaces"]) / job["id"]
    for name in ("keep.txt", "edit.txt"):
        (ws / name).write_text((up.parent / ".bases" / upload / name).read_text())
    (ws / "edit.txt").write_text("new\n")
    (ws / "new.txt").write_text("fresh\n")
    (ws / ".flashpods-ready").write_text("")
    host.runtime.exit(job["id"], 0)
    host.reaper.tick()
    final = host.get(f"/jobs/{job['id']}").get_json()["job"]
    assert final["status"] == "succeeded"
    assert final["workspace_changes"]["added"] == 1 and final["workspace_changes"]["deleted"] == 1
    assert not ws.exists()
    listing = {a["path"] for a in host.get(f"/jobs/{job['id']}/artifacts").get_json()["artifacts"]}
    assert {
        "_workspace/files/edit.txt",
        "_workspace/files/new.txt",
        "_workspace/changes.json",
    } <= listing
    changes = json.loads(host.get(f"/jobs/{job['id']}/artifacts/_workspace/changes.json").data)
    assert (changes["added"], changes["modified"], changes["deleted"]) == (
        ["new.txt"],
        ["edit.txt"],
        ["gone.txt"],
    )
    diff = host.get(f"/jobs/{job['id']}/artifacts/_workspace/changes.diff").get_data(as_text=True)
    assert "-old\n+new\n" in diff and "+fresh\n" in diff and "-bye\n" in diff


def test_healthz_names_the_failing_part(host):
    resp = host.client.get("/healthz")  # no token needed
    assert resp.status_code == 503
    assert resp.get_json()["failing"] == ["reaper"] and "reaper" in resp.get_json()["error"]
    host.reaper.tick()
    assert host.client.get("/healthz").status_code == 200
    host.runtime.down = True
    with pytest.raises(PodmanError):
        host.reaper.tick()  # the reaper's `podman ps` fails and it records that
    resp = host.client.get("/healthz")
    assert resp.status_code == 503 and resp.get_json()["failing"] == ["podman"]


def test_podman_down_during_kill_is_503_not_500(host):
    job = host.job("sleep 100")
    host.runtime.down = True

    def refuse(name, sig):
        from flashpods_api.runtime import PodmanError

        raise PodmanError("podman kill failed: connection refused")

    host.runtime.signal = refuse
    resp = host.post(f"/jobs/{job['id']}/kill")
    assert resp.status_code == 200 and resp.get_json()["job"]["stop_requested"] is True


def test_openapi_document_matches_the_flask_routes(host):
    doc = host.get("/openapi.json").get_json()
    documented = {(path, method.upper()) for path, ops in doc["paths"].items() for method in ops}
    served = set()
    for rule in host.app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = rule.rule.replace("<path:path>", "{path}").replace("<job_id>", "{job_id}")
        served |= {(path, m) for m in rule.methods - {"HEAD", "OPTIONS"}}
    assert documented == served


def test_container_flags_follow_the_contract(host):
    job = host.job(upload_id=host.post("/uploads").get_json()["upload_id"])
    args = run_args(host.runtime.specs[job["id"]])
    joined = " ".join(args)
    for flag in (
        "--userns=keep-id",
        "--init",
        "--security-opt no-new-privileges",
        "--cap-drop ALL",
        "--read-only",
        "--log-driver k8s-file",
        f"--label flashpods.job={job['id']}",
        "--label flashpods.kind=worker",
        "--label flashpods.instance=unit",
        f"--name {job['id']}",
        "--network slirp4netns",
    ):
        assert flag in joined, flag
    assert "--rm" not in args and "--pid=host" not in joined and "--network=host" not in joined
    assert "destination=/flashpods/input,ro=true" in joined
    assert "destination=/flashpods/bin/flashpods-init,ro=true" in joined
    token_dir = Path(host.raw["token_socket"]).parent
    assert f"source={token_dir},destination=/run/flashpods,ro=true" in joined
    assert "podman.sock" not in joined and host.raw["db_path"] not in joined
    assert args[-5:] == ["/flashpods/bin/flashpods-init", "--", "sh", "-c", "echo hi"]


def test_an_upload_replaced_by_a_link_is_never_mounted(host, tmp_path):
    upload = host.post("/uploads").get_json()["upload_id"]
    path = Path(host.raw["storage"]["uploads"]) / upload
    path.rmdir()
    os.symlink(tmp_path, path)
    job = host.job(upload_id=upload)
    assert job["status"] == "failed" and "not a directory" in job["error"]
    assert job["id"] not in host.runtime.specs
