"""V8-V12: secrets reach job containers through the token socket, by role, and only them.

The dev host attests callers in `peer` mode (kernel facts about the socket's peer); the
SPIRE rows (forged, expired, wrong-audience, alg-none and foreign-trust-domain SVIDs,
the SPIRE agent socket) run in tests/nixos, where SPIRE exists, and in the token
service's own tests. Test names say `peer_mode` where that is the case.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time

from flashpods_devhost.pytest_plugin import TEST_SECRETS
from host_settings import JOB_UID
from job_runner import IMAGE
from topology import HERE, PYTHON

TOKEN_SOCKET_IN_JOB = "/run/flashpods/token.sock"
HELPER_IN_JOB = "/flashpods/bin/flashpods-init"
# Prints "NAME <sha256 of its value>" for each secret, never the value itself (V15).
HASHES = (
    "for n in GITHUB_TOKEN ANTHROPIC_API_KEY; do eval v=\\$$n; "
    'echo "$n $(printf %s "$v" | sha256sum)"; done'
)


def _sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _hashes(log: str) -> dict[str, str]:
    found = {}
    for line in log.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in ("GITHUB_TOKEN", "ANTHROPIC_API_KEY"):
            found[parts[0]] = parts[1]
    return found


def _exchange(devhost, tokens: list[str], pid: str | None = None) -> dict:
    """Exchange as uid flashpods; in the pid namespace of `pid` (a job's init) if given,
    which is what a `podman exec` into that container is, with a client that can ask
    for any token."""
    client = [PYTHON, str(HERE / "token_client.py"), str(devhost.token_socket)]
    body = json.dumps({"tokens": tokens})
    if pid is None:
        argv = ["runuser", "-u", "flashpods", "--", *client, body]
    else:
        ids = ["-S", str(JOB_UID), "-G", str(JOB_UID)]
        argv = ["nsenter", "-t", pid, "--pid", *ids, "--", *client, body]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True)
    return json.loads(result.stdout)


def _job_mounts(devhost) -> list[str]:
    """The token socket and the helper, mounted where the API mounts them."""
    helper = devhost.api_config["helper_path"]
    return [
        "--mount", f"type=bind,source={devhost.token_socket},destination={TOKEN_SOCKET_IN_JOB}",
        "--mount", f"type=bind,source={helper},destination={HELPER_IN_JOB},ro=true",
    ]  # fmt: skip


def _pid(devhost, job_id: str) -> str:
    pid = devhost.podman("inspect", "--format", "{{.State.Pid}}", job_id).stdout.strip()
    assert pid.isdigit() and pid != "0", pid
    return pid


def test_V8_job_reaches_the_token_socket_peer_mode(api_jobs):
    log = api_jobs.run(f"test -S {TOKEN_SOCKET_IN_JOB} && echo socket-ok; {HASHES}")
    assert "socket-ok" in log, log
    # The helper's exchange over that socket worked: the job got its secret.
    assert _hashes(log)["GITHUB_TOKEN"] == _sha(TEST_SECRETS["GITHUB_TOKEN"]), log


def test_V9_worker_gets_only_worker_secrets_peer_mode(api_jobs, devhost):
    log = api_jobs.run(HASHES)
    got = _hashes(log)
    assert got["GITHUB_TOKEN"] == _sha(TEST_SECRETS["GITHUB_TOKEN"]), log
    assert got["ANTHROPIC_API_KEY"] == _sha(""), "a worker must not get the agent's key"
    # Asking for the agent's token explicitly from inside the worker: 403.
    job_id = api_jobs.start("sleep 60")
    try:
        pid = _pid(devhost, job_id)
        denied = _exchange(devhost, ["ANTHROPIC_API_KEY"], pid=pid)
        assert denied["status"] == 403, denied
        assert TEST_SECRETS["ANTHROPIC_API_KEY"] not in denied["body"]
        allowed = _exchange(devhost, ["GITHUB_TOKEN"], pid=pid)
        assert allowed["status"] == 200, allowed
        assert json.loads(allowed["body"])["role"] == "worker"
    finally:
        api_jobs.kill(job_id)


def test_V10_sub_agent_gets_agent_secrets_peer_mode(api_jobs):
    job_id = api_jobs.submit(HASHES, kind="sub_agent")
    job = api_jobs.wait(job_id)
    log = api_jobs.logs(job_id)
    assert job["status"] == "succeeded", (job, log)
    got = _hashes(log)
    assert got["ANTHROPIC_API_KEY"] == _sha(TEST_SECRETS["ANTHROPIC_API_KEY"]), log
    assert got["GITHUB_TOKEN"] == _sha(TEST_SECRETS["GITHUB_TOKEN"]), log


def test_V11_a_process_that_is_not_a_job_container_gets_nothing_peer_mode(devhost, topology):
    # The job uid on the host, outside any container (a container escape).
    outside = _exchange(devhost, ["GITHUB_TOKEN"])
    assert outside["status"] == 401, outside
    assert TEST_SECRETS["GITHUB_TOKEN"] not in outside["body"]
    # A container the API did not start, with the socket and the helper mounted the same
    # way and labelled like a job: the helper is refused and the command never runs.
    name = f"fp{topology.tag}-forged"
    result = devhost.podman(
        "run", "--rm", "--name", name, "--userns=keep-id",
        "--label", f"flashpods.instance={devhost.settings.instance}",
        "--label", "flashpods.kind=worker",
        *_job_mounts(devhost),
        IMAGE, HELPER_IN_JOB, "--", "sh", "-c", "echo command-ran",
    )  # fmt: skip
    assert result.returncode == 125, result
    assert "command-ran" not in result.stdout
    assert "401" in result.stderr, result.stderr


def test_V12_a_finished_jobs_identity_is_dead_peer_mode(api_jobs, devhost):
    job_id = api_jobs.submit("true")
    assert api_jobs.wait(job_id)["status"] == "succeeded"
    # Once its exit is recorded the reaper removes the container, freeing the name.
    deadline = time.monotonic() + 30
    while devhost.podman("container", "exists", job_id).returncode == 0:
        assert time.monotonic() < deadline, f"{job_id} was never removed"
        time.sleep(0.2)
    # The job uid re-creates a container with the finished job's name and labels.
    result = devhost.podman(
        "run", "--rm", "--name", job_id, "--userns=keep-id",
        "--label", f"flashpods.job={job_id}", "--label", "flashpods.kind=worker",
        "--label", f"flashpods.instance={devhost.settings.instance}",
        *_job_mounts(devhost),
        IMAGE, HELPER_IN_JOB, "--", "sh", "-c", "echo command-ran",
    )  # fmt: skip
    assert result.returncode == 125, result
    assert "command-ran" not in result.stdout
    assert "refused" in result.stderr, result.stderr
