"""The `flashpods` CLI against the fake API (and the loopback rsync daemon for `run`)."""

import io
import tarfile

import pytest
from flashpods_mcp import cli

JOB = "job_0123456789ab"


@pytest.fixture
def env(tmp_path, monkeypatch, fake_api, rsync_daemon):
    home = tmp_path / "home"
    (home / "proj").mkdir(parents=True)
    (home / "proj" / "a.txt").write_text("a")
    for key, value in {
        "HOME": str(home),
        "FLASHPODS_API_URL": fake_api.url,
        "FLASHPODS_API_TOKEN": "t",
        "FLASHPODS_RSYNC_URL": rsync_daemon.url,
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(home / "proj")
    return home


def job(status, exit_code=None):
    return {"id": JOB, "kind": "worker", "status": status, "exit_code": exit_code}


def logs_route(chunks):
    """Serve the log in pieces: offset -> (data, final)."""

    def answer(handler):
        offset = int(handler.path.split("offset=")[1].split("&")[0])
        data, final = chunks.get(offset, ("", True))
        body = {"offset": offset, "next_offset": offset + len(data), "data": data, "final": final}
        return (200, body)

    return answer


def test_jobs_table(env, fake_api, capsys):
    fake_api.routes[("GET", "/jobs")] = (200, {"jobs": [job("succeeded", 0)]})
    assert cli.main(["jobs"]) == 0
    out = capsys.readouterr().out
    assert JOB in out and "succeeded" in out


def test_unknown_job_is_one_sentence(env, fake_api, capsys):
    fake_api.routes[("GET", f"/jobs/{JOB}")] = (404, {"error": "no job"})
    assert cli.main(["status", JOB]) == 1
    assert capsys.readouterr().err.startswith(f"flashpods: Unknown job {JOB}")


def test_run_uploads_follows_and_exits_with_the_code(env, fake_api, rsync_daemon, capfd):
    fake_api.routes[("POST", "/uploads")] = (201, {"upload_id": "up_cccccccccccccccc"})
    fake_api.routes[("POST", "/jobs")] = (201, {"job": job("starting")})
    fake_api.routes[("GET", f"/jobs/{JOB}/logs")] = logs_route(
        {0: ("one\n", False), 4: ("two\n", False), 8: ("", True)}
    )
    fake_api.routes[("GET", f"/jobs/{JOB}")] = (200, {"job": job("failed", 7)})
    assert cli.main(["run", "--env", "A=1", "--", "make", "test it"]) == 7
    captured = capfd.readouterr()
    assert captured.out == "one\ntwo\n"
    assert f"started {JOB}" in captured.err
    request = next(r for r in fake_api.requests if r["path"] == "/jobs")["json"]
    # several words are an exact argv, quoted for sh -c
    assert request["command"] == "make 'test it'"
    assert request["env"] == {"A": "1"} and request["upload_id"] == "up_cccccccccccccccc"
    assert (rsync_daemon.uploads / "up_cccccccccccccccc" / "a.txt").read_text() == "a"


def test_artifacts_and_kill(env, fake_api, capsys):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("r/x.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    fake_api.routes[("GET", f"/jobs/{JOB}/artifacts.tar")] = (200, buf.getvalue())
    fake_api.routes[("POST", f"/jobs/{JOB}/kill")] = (200, {"job": job("killed")})
    assert cli.main(["artifacts", JOB, "got"]) == 0
    assert (env / "proj" / "got" / "r" / "x.txt").read_text() == "hi"
    assert cli.main(["kill", JOB]) == 0
    assert f"{JOB} worker killed" in capsys.readouterr().out


def test_bad_env_argument(env, capsys):
    assert cli.main(["run", "--env", "NOEQUALS", "--", "true"]) == 1
    assert "--env takes NAME=VALUE" in capsys.readouterr().err
