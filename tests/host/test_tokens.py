"""V8-V12: secrets reach job containers through the token socket, by role, and only them.

Every row runs twice (the `token_host` fixture): against the dev host in `peer` mode
(kernel facts about the socket's peer) and against a dev host in `spire` mode (real
spire-server and spire-agent with the flashpods workload attestor; flashpods-init
fetches a JWT-SVID, the token service verifies it against the agent's bundle). The
forged, expired, wrong-audience, alg-none and foreign-trust-domain SVIDs SPIRE will
not mint are the token service's unit suite (tests/unit/token).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import signal
import subprocess
import time

from flashpods_devhost.pytest_plugin import TEST_SECRETS
from host_settings import JOB_UID
from job_runner import IMAGE
from topology import HERE, PYTHON

TOKEN_SOCKET_IN_JOB = "/run/flashpods/token.sock"
HELPER_IN_JOB = "/flashpods/bin/flashpods-init"
AGENT_SOCKET_IN_JOB = "/run/spire/sockets/agent.sock"
AGENT_CLI_IN_JOB = "/flashpods/bin/spire-agent"
SVID_RE = re.compile(r"token\((spiffe://[^)]*)\):\s+(\S+)")
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


def _spire(devhost) -> bool:
    return devhost.settings.attestation == "spire"


def _in_job(pid: str | None, argv: list[str]) -> list[str]:
    """argv as the job uid: on the host, or in the pid namespace of `pid` (a job's init),
    which is what a `podman exec` into that container is."""
    if pid is None:
        return ["runuser", "-u", "flashpods", "--", *argv]
    ids = ["-S", str(JOB_UID), "-G", str(JOB_UID)]
    return ["nsenter", "-t", pid, "--pid", *ids, "--", *argv]


def _fetch_svid(devhost, pid: str | None) -> subprocess.CompletedProcess:
    """`spire-agent api fetch jwt` from the real agent, as the job uid (in a job)."""
    spire = devhost.spire
    argv = [str(spire.bins.agent), "api", "fetch", "jwt", "-audience", "flashpods-token",
            "-socketPath", str(spire.paths.agent_socket), "-timeout", "5s"]  # fmt: skip
    return subprocess.run(_in_job(pid, argv), capture_output=True, text=True, timeout=60)


def _svid(devhost, pid: str) -> str:
    """The job's own SVID (retried: a new entry reaches the agent on its next sync)."""
    deadline = time.monotonic() + 60
    while True:
        out = _fetch_svid(devhost, pid)
        found = SVID_RE.search(out.stdout)
        if out.returncode == 0 and found:
            return found.group(2)
        assert time.monotonic() < deadline, out.stderr
        time.sleep(0.3)


def _exchange(devhost, tokens: list[str], pid: str | None = None, svid: str | None = None) -> dict:
    """Exchange as uid flashpods, in a job's pid namespace if `pid` is given, with a
    client that can ask for any token; in spire mode with `svid` as the bearer."""
    client = [PYTHON, str(HERE / "token_client.py"), str(devhost.token_socket)]
    argv = _in_job(pid, [*client, json.dumps({"tokens": tokens}), *([svid] if svid else [])])
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True)
    return json.loads(result.stdout)


def _job_mounts(devhost) -> list[str]:
    """The token socket and the helper mounted where the API mounts them; in spire mode
    also the agent's socket and CLI, and the helper told to use them."""
    helper = devhost.api_config["helper_path"]
    mounts = [
        "--mount", f"type=bind,source={devhost.token_socket},destination={TOKEN_SOCKET_IN_JOB}",
        "--mount", f"type=bind,source={helper},destination={HELPER_IN_JOB},ro=true",
    ]  # fmt: skip
    if _spire(devhost):
        spire = devhost.spire
        mounts += [
            "--mount", f"type=bind,source={spire.paths.agent_socket},"
            f"destination={AGENT_SOCKET_IN_JOB}",
            "--mount", f"type=bind,source={spire.bins.agent},"
            f"destination={AGENT_CLI_IN_JOB},ro=true",
            "-e", "FLASHPODS_ATTESTATION=spire",
            "-e", f"SPIFFE_ENDPOINT_SOCKET=unix://{AGENT_SOCKET_IN_JOB}",
            "-e", "FLASHPODS_SVID_WAIT_S=3",
        ]  # fmt: skip
    return mounts


@contextlib.contextmanager
def _reaper_paused(devhost):
    """The reaper removes containers of its instance that are no live job on sight (a
    defence of its own); paused, the helper's refusal is what the row sees (in spire
    mode the helper waits a few seconds for an SVID before it gives up)."""
    devhost.kill("reaper", signal.SIGSTOP)
    try:
        yield
    finally:
        devhost.kill("reaper", signal.SIGCONT)


def _pid(devhost, job_id: str) -> str:
    pid = devhost.podman("inspect", "--format", "{{.State.Pid}}", job_id).stdout.strip()
    assert pid.isdigit() and pid != "0", pid
    return pid


def test_V8_job_reaches_the_token_socket(token_host):
    api_jobs, devhost = token_host
    sockets = f"test -S {TOKEN_SOCKET_IN_JOB}"
    if _spire(devhost):
        sockets += f" && test -S {AGENT_SOCKET_IN_JOB} && test -x {AGENT_CLI_IN_JOB}"
    log = api_jobs.run(f"{sockets} && echo socket-ok; {HASHES}")
    assert "socket-ok" in log, log
    # The helper's exchange over that socket worked: the job got its secret.
    assert _hashes(log)["GITHUB_TOKEN"] == _sha(TEST_SECRETS["GITHUB_TOKEN"]), log


def test_V9_worker_gets_only_worker_secrets(token_host):
    api_jobs, devhost = token_host
    log = api_jobs.run(HASHES)
    got = _hashes(log)
    assert got["GITHUB_TOKEN"] == _sha(TEST_SECRETS["GITHUB_TOKEN"]), log
    assert got["ANTHROPIC_API_KEY"] == _sha(""), "a worker must not get the agent's key"
    # Asking for the agent's token explicitly from inside the worker: 403.
    job_id = api_jobs.start("sleep 60")
    try:
        pid = _pid(devhost, job_id)
        svid = _svid(devhost, pid) if _spire(devhost) else None
        denied = _exchange(devhost, ["ANTHROPIC_API_KEY"], pid=pid, svid=svid)
        assert denied["status"] == 403, denied
        assert TEST_SECRETS["ANTHROPIC_API_KEY"] not in denied["body"]
        allowed = _exchange(devhost, ["GITHUB_TOKEN"], pid=pid, svid=svid)
        assert allowed["status"] == 200, allowed
        assert json.loads(allowed["body"])["role"] == "worker"
    finally:
        api_jobs.kill(job_id)


def test_V10_sub_agent_gets_agent_secrets(token_host):
    api_jobs, _devhost = token_host
    job_id = api_jobs.submit(HASHES, kind="sub_agent")
    job = api_jobs.wait(job_id)
    log = api_jobs.logs(job_id)
    assert job["status"] == "succeeded", (job, log)
    got = _hashes(log)
    assert got["ANTHROPIC_API_KEY"] == _sha(TEST_SECRETS["ANTHROPIC_API_KEY"]), log
    assert got["GITHUB_TOKEN"] == _sha(TEST_SECRETS["GITHUB_TOKEN"]), log


def test_V11_a_process_that_is_not_a_job_container_gets_nothing(token_host, topology):
    api_jobs, devhost = token_host
    if _spire(devhost):
        # The job uid on the host asks the real agent: no SVID, while a job runs whose
        # entry has reached the agent (the attestor finds no job container for it).
        job_id = api_jobs.start("sleep 60")
        try:
            _svid(devhost, _pid(devhost, job_id))
            fetched = _fetch_svid(devhost, None)
            assert fetched.returncode != 0 and "token(" not in fetched.stdout, fetched.stdout
            assert "no identity issued" in fetched.stderr + fetched.stdout, fetched.stderr
        finally:
            api_jobs.kill(job_id)
    # The job uid on the host, outside any container (a container escape).
    outside = _exchange(devhost, ["GITHUB_TOKEN"])
    assert outside["status"] == 401, outside
    assert TEST_SECRETS["GITHUB_TOKEN"] not in outside["body"]
    # A container the API did not start, with the socket(s) and the helper mounted the
    # same way and labelled like a job: the helper is refused and the command never runs.
    name = f"fp{topology.tag}-forged-{devhost.settings.attestation}"
    with _reaper_paused(devhost):
        result = devhost.podman(
            "run", "--rm", "--name", name, "--userns=keep-id",
            "--label", f"flashpods.instance={devhost.settings.instance}",
            "--label", "flashpods.kind=worker",
            *_job_mounts(devhost),
            IMAGE, HELPER_IN_JOB, "--", "sh", "-c", "echo command-ran",
        )  # fmt: skip
    assert result.returncode == 125, result
    assert "command-ran" not in result.stdout
    refusal = "could not fetch a JWT-SVID" if _spire(devhost) else "401"
    assert refusal in result.stderr, result.stderr


def test_V12_a_finished_jobs_identity_is_dead(token_host):
    api_jobs, devhost = token_host
    svid = None
    if _spire(devhost):
        # Spire mode: keep the job's own, still valid SVID for after its end.
        job_id = api_jobs.start("sleep 60")
        svid = _svid(devhost, _pid(devhost, job_id))
        api_jobs.kill(job_id)
        assert api_jobs.wait(job_id)["status"] == "killed"
    else:
        job_id = api_jobs.submit("true")
        assert api_jobs.wait(job_id)["status"] == "succeeded"
    # Once its exit is recorded the reaper removes the container, freeing the name.
    deadline = time.monotonic() + 30
    while devhost.podman("container", "exists", job_id).returncode == 0:
        assert time.monotonic() < deadline, f"{job_id} was never removed"
        time.sleep(0.2)
    if svid:
        replayed = _exchange(devhost, ["GITHUB_TOKEN"], svid=svid)
        assert replayed["status"] == 401 and "job_running" in replayed["body"], replayed
    # The job uid re-creates a container with the finished job's name and labels.
    with _reaper_paused(devhost):
        result = devhost.podman(
            "run", "--rm", "--name", job_id, "--userns=keep-id",
            "--label", f"flashpods.job={job_id}", "--label", "flashpods.kind=worker",
            "--label", f"flashpods.instance={devhost.settings.instance}",
            *_job_mounts(devhost),
            IMAGE, HELPER_IN_JOB, "--", "sh", "-c", "echo command-ran",
        )  # fmt: skip
    assert result.returncode == 125, result
    assert "command-ran" not in result.stdout
    refusal = "could not fetch a JWT-SVID" if _spire(devhost) else "refused"
    assert refusal in result.stderr, result.stderr
