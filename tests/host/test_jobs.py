"""V14-V17 on the host simulation: no spawning from inside, no leaks, retention, crashes.

tests/integration/api covers retention and crash safety in more depth on loopback; the
rows here prove them on this substrate too (API, reaper and containers in the host
namespace, the laptop calling through WireGuard, the firewall loaded).
"""

from __future__ import annotations

import json
import signal
import subprocess
import time

from flashpods_devhost.pytest_plugin import TEST_SECRETS
from host_settings import RETENTION
from topology import API_PORT, HOST_ADDRESSES


def _job_ids(api_jobs) -> set[str]:
    got = api_jobs.http("GET", "/jobs?limit=500")
    assert got["status"] == 200, got
    return {job["id"] for job in json.loads(got["body"])["jobs"]}


def _eventually(what: str, check, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} not true after {timeout} s"
        time.sleep(0.3)


def test_V14_sub_agent_cannot_spawn_agents(api_jobs):
    before = _job_ids(api_jobs)
    body = '{"kind":"sub_agent","prompt":"spawn more"}'
    request = (
        f"POST /jobs HTTP/1.1\\r\\nHost: api\\r\\nContent-Type: application/json\\r\\n"
        f"Content-Length: {len(body)}\\r\\nConnection: close\\r\\n\\r\\n{body}"
    )
    # Every address the host has, on the API's port, with a complete POST /jobs.
    tries = "\n".join(
        f"out=$(printf '{request}' | timeout 6 nc -w 3 {addr} {API_PORT} 2>&1); "
        f'echo "TRY {addr} rc=$? $(echo "$out" | head -n 1)"'
        for addr in HOST_ADDRESSES
    )
    job_id = api_jobs.submit(tries, kind="sub_agent")
    job = api_jobs.wait(job_id)
    log = api_jobs.logs(job_id)
    lines = [line for line in log.splitlines() if line.startswith("TRY ")]
    assert len(lines) == len(HOST_ADDRESSES), log
    for line in lines:
        assert "rc=0" not in line and "HTTP/" not in line, line
        assert "timed out" not in line, f"refused at once, not dropped: {line}"
    assert job["status"] == "succeeded", job
    assert _job_ids(api_jobs) - before == {job_id}, "the sub-agent created a job"


def test_V15_no_secret_leaks(token_host):
    # In both attestation modes (tests/host/conftest.py, token_host): in spire mode the
    # secrets travel the same way, behind a JWT-SVID from the real agent.
    api_jobs, devhost = token_host
    secret_using = (
        'test -n "$GITHUB_TOKEN" && test -n "$ANTHROPIC_API_KEY" && echo have-secrets; '
        "echo result > /artifacts/out.txt; echo changed > /workspace/new.txt; sleep 4"
    )
    job_id = api_jobs.submit(secret_using, kind="sub_agent")
    api_jobs.wait(job_id, until={"running"})
    # While it runs: nothing about the container carries a secret (they come from the
    # token socket at start, never through podman's configuration).
    inspect = devhost.podman("inspect", job_id).stdout
    assert job_id in inspect
    for name, value in TEST_SECRETS.items():
        assert value not in inspect, f"{name} in podman inspect"
    job = api_jobs.wait(job_id)
    assert job["status"] == "succeeded", job
    assert "have-secrets" in api_jobs.logs(job_id)
    artifacts = api_jobs.http("GET", f"/jobs/{job_id}/artifacts")
    assert artifacts["status"] == 200 and "out.txt" in artifacts["body"], artifacts
    # Everything Flashpods stored (DB, logs, workspaces, artifacts, uploads, service
    # logs, the token service's audit log), except the secret files themselves.
    root = devhost.settings.root
    for name, value in TEST_SECRETS.items():
        found = subprocess.run(
            ["grep", "-rlaF", "--exclude-dir=secrets", value, str(root)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert found.stdout == "", f"{name} found in {found.stdout}"
        assert found.returncode == 1, found.stderr


def test_V16_retention_artifacts_logs_and_uploads_expire(api_jobs, devhost):
    paths = devhost.paths
    unused = json.loads(api_jobs.http("POST", "/uploads")["body"])["upload_id"]
    assert (paths.uploads / unused).is_dir()
    job_id = api_jobs.submit("echo kept-for-a-while; echo a > /artifacts/a.txt")
    assert api_jobs.wait(job_id)["status"] == "succeeded"
    assert "kept-for-a-while" in api_jobs.logs(job_id)
    listing = api_jobs.http("GET", f"/jobs/{job_id}/artifacts")
    assert listing["status"] == 200 and "a.txt" in listing["body"], listing

    slack = 15  # reaper interval, plus a slow machine
    _eventually(
        "artifacts expired",
        lambda: api_jobs.http("GET", f"/jobs/{job_id}/artifacts")["status"] == 410,
        RETENTION["artifacts_s"] + slack,
    )
    assert not (paths.artifacts / job_id).exists()
    _eventually(
        "log file deleted",
        lambda: not (paths.logs / f"{job_id}.log").exists(),
        RETENTION["logs_s"] + slack,
    )
    _eventually(
        "unused upload deleted",
        lambda: not (paths.uploads / unused).exists(),
        RETENTION["uploads_s"] + slack,
    )
    # The record stays, and says what is gone.
    assert api_jobs.job(job_id)["status"] == "succeeded"


def test_V17_crash_safety_kill_api_and_reaper(api_jobs, devhost):
    ends_while_down = api_jobs.submit("sleep 2; echo crash-marker; exit 3")
    outlives_restart = api_jobs.submit("sleep 8; echo second-marker")
    for job_id in (ends_while_down, outlives_restart):
        api_jobs.wait(job_id, until={"running"})
    devhost.kill("api", signal.SIGKILL)
    devhost.kill("reaper", signal.SIGKILL)
    time.sleep(4)  # the first job ends while nothing of Flashpods watches
    devhost.start("api", "reaper")

    first = api_jobs.wait(ends_while_down, timeout=60)
    assert first["status"] == "failed" and first["exit_code"] == 3, first
    assert "crash-marker" in api_jobs.logs(ends_while_down)
    second = api_jobs.wait(outlives_restart, timeout=60)
    assert second["status"] == "succeeded", second
    assert "second-marker" in api_jobs.logs(outlives_restart)

    def no_container_left() -> bool:
        label = f"label=flashpods.instance={devhost.settings.instance}"
        names = devhost.podman("ps", "-a", "--format", "{{.Names}}", "--filter", label).stdout
        return not {ends_while_down, outlives_restart} & set(names.split())

    _eventually("no orphan container", no_container_left, 30)
