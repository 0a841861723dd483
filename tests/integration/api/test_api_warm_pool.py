"""The warm pool on a real dev host: gunicorn, the reaper, rootless Podman, the token service.

A warm container runs before any job asks for it; these tests check that a job handed
one really runs its command with its upload, log, artifacts and exit code, can be killed
and timed out, that the container gets no secret before it is claimed, and that the
pool survives a reaper crash.
"""

from __future__ import annotations

import json
import signal
import time

import pytest
from api_it_support import Api

pytestmark = pytest.mark.slow

SECRET = "ghp-warm-pool-secret-0123456789"


def _ready(api: Api, at_least: int = 1, timeout: float = 90) -> int:
    deadline = time.monotonic() + timeout
    while True:
        ready = api.get("/healthz").json()["checks"]["warm_pool"]["ready"]["worker"]
        if ready >= at_least:
            return ready
        assert time.monotonic() < deadline, f"warm pool stuck at {ready} ready"
        time.sleep(0.1)


def _warm_names(host) -> list[str]:
    done = host.podman(
        "ps", "--filter", f"label=flashpods.instance={host.settings.instance}",
        "--filter", "label=flashpods.warm=1", "--format", "{{.Names}}",
    )  # fmt: skip
    return done.stdout.split()


@pytest.fixture
def api(devhost_factory):
    host = devhost_factory(
        api_overrides={"warm_pool": {"worker": 1}},
        secrets={"GITHUB_TOKEN": SECRET, "ANTHROPIC_API_KEY": "sk-unused"},
        roles={"worker": ["GITHUB_TOKEN"], "sub_agent": ["ANTHROPIC_API_KEY"]},
    )
    api = Api(host)
    _ready(api)
    return api


def test_warm_job_runs_its_command_with_upload_logs_artifacts_and_secret(api):
    host = api.host
    [warm_id] = _warm_names(host)
    # Before it is claimed, the container gets nothing from the token service.
    probe = host.podman(
        "exec", warm_id, "/flashpods/bin/flashpods-init", "--", "sh", "-c", "echo got=$GITHUB_TOKEN"
    )
    assert probe.returncode == 125, (probe.stdout, probe.stderr)
    assert SECRET not in probe.stdout + probe.stderr
    assert "flashpods-init:" in probe.stderr

    upload = api.upload({"input.txt": "forty-two\n"})
    script = (
        "cat input.txt; echo to-stderr >&2; echo art > /artifacts/a.txt; echo new > added.txt;"
        ' [ "$GITHUB_TOKEN" = "' + SECRET + '" ] && echo secret-ok; echo env=$CI; exit 3'
    )
    job = api.submit(script, upload_id=upload["upload_id"], env={"CI": "yes"})
    assert job["id"] == warm_id and job["status"] == "running"
    assert job["started_at"] and job["claimed_at"]
    done = api.wait(job["id"])
    assert (done["status"], done["exit_code"], done["error"]) == ("failed", 3, None)
    # stdout and stderr are separate pipes: their lines interleave in either order.
    log = api.log_text(job["id"])
    assert sorted(log.splitlines()) == ["env=yes", "forty-two", "secret-ok", "to-stderr"]
    assert log.index("forty-two") < log.index("secret-ok") < log.index("env=yes")
    assert api.get(f"/jobs/{job['id']}/artifacts/a.txt").content == b"art\n"
    changes = json.loads(api.get(f"/jobs/{job['id']}/artifacts/_workspace/changes.json").content)
    assert changes["added"] == ["added.txt"] and changes["modified"] == []
    # The upload became a kept base: a later upload may name it.
    again = api.post("/uploads", {"basis": upload["upload_id"]}).json()
    assert again["link_dest"] == f"../.bases/{upload['upload_id']}/"
    # The pool refills with a new container of a new id.
    _ready(api)
    assert _warm_names(host) != [warm_id]
    assert SECRET not in host.podman("inspect", _warm_names(host)[0]).stdout


def test_warm_job_kill_and_timeout(api):
    victim = api.submit("sleep 600")
    assert victim["status"] == "running"
    assert api.post(f"/jobs/{victim['id']}/kill").status_code == 200
    assert api.wait(victim["id"], timeout=60)["status"] == "killed"
    _ready(api)
    slow = api.submit("sleep 600", timeout_s=1)
    done = api.wait(slow["id"], timeout=60)
    assert done["status"] == "timed_out"
    assert done["finished_at"] and done["started_at"]


def test_pool_survives_a_reaper_crash_and_removes_strays(api):
    host = api.host
    [warm_id] = _warm_names(host)
    host.kill("reaper", signal.SIGKILL)
    host.podman("rm", "-f", "-t", "0", warm_id)  # the ready container vanished meanwhile
    stray = host.podman(
        "run", "-d", "--label", f"flashpods.instance={host.settings.instance}",
        "--label", "flashpods.job=wk_stray", "--label", "flashpods.warm=1",
        "--name", f"wk-stray-{host.settings.instance}", "localhost/flashpods-worker:latest",
        "sleep", "600",
    )  # fmt: skip
    assert stray.returncode == 0, stray.stderr
    host.start("reaper")
    deadline = time.monotonic() + 60
    while True:
        names = _warm_names(host)
        if names and warm_id not in names and all("stray" not in n for n in names):
            break
        assert time.monotonic() < deadline, names
        time.sleep(0.2)
    _ready(api)
    job = api.submit("echo after-crash")
    assert job["id"] in names
    assert api.wait(job["id"])["status"] == "succeeded"
    assert api.log_text(job["id"]) == "after-crash\n"


def test_the_default_settings_give_a_warm_first_spawn_of_each_kind(devhost_factory):
    # warm_pool=None: the packaged default (on), as `scripts/dev-host` runs it.
    api = Api(devhost_factory(warm_pool=None))
    assert api.get("/healthz").json()["checks"]["warm_pool"]["target"] == {
        "worker": 1,
        "sub_agent": 1,
    }
    _ready(api)
    [warm_id] = [n for n in _warm_names(api.host) if _kind(api.host, n) == "worker"]
    job = api.submit("echo first")
    assert job["id"] == warm_id and job["claimed_at"]
    assert api.wait(job["id"])["status"] == "succeeded"


def _kind(host, name: str) -> str:
    done = host.podman("inspect", "--format", '{{index .Config.Labels "flashpods.kind"}}', name)
    return done.stdout.strip()
