"""V8-V12, V15 in peer mode (SPIRE is not packaged for Debian, so the dev host's kernel
peer attestation stands in; the forged-SVID suite in tests/unit/token covers spire mode).

Every job here is started through the real API of a real dev host (DevHost launcher:
podman service, token service as flashpods-token with CAP_SYS_PTRACE, gunicorn API,
reaper), runs as a rootless Podman container, and gets its secrets through the real
static helper /flashpods/bin/flashpods-init. Requests the helper does not make (asking
for one named token) come from a small static probe run with `podman exec` inside
the job's container.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from token_support import (
    FINAL,
    WORKER_IMAGE,
    Api,
    build_probe,
    grep_tree,
    place_probe,
    probe_in,
    unique_secrets,
    wait_container_running,
)

pytestmark = pytest.mark.slow

SECRETS = unique_secrets()
ROLES = {"worker": ["GITHUB_TOKEN"], "sub_agent": ["ANTHROPIC_API_KEY", "GITHUB_TOKEN"]}
WAIT_FOR_DONE = "while [ ! -e /workspace/probe.done ]; do sleep 0.1; done"
# The sub_agent's "agent" is a shell script in the busybox image: it proves what the
# helper put into its environment, by hash (the log must never hold a value).
AGENT_SCRIPT = (
    'printf %s "$ANTHROPIC_API_KEY" | sha256sum; printf %s "$GITHUB_TOKEN" | sha256sum; '
    'echo "prompt=$FLASHPODS_PROMPT"'
)

HOST_CLIENT = r"""
import http.client, json, socket, sys
class C(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX); self.sock.connect(sys.argv[1])
c = C("t", timeout=10)
c.request("POST", "/v1/exchange", body=b"", headers={"Content-Length": "0"})
r = c.getresponse()
print(json.dumps({"status": r.status, "body": json.loads(r.read())}))
"""


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> Path:
    return build_probe(tmp_path_factory.mktemp("probe"))


@pytest.fixture
def host(devhost_factory):
    return devhost_factory(
        secrets=dict(SECRETS),
        roles={r: list(n) for r, n in ROLES.items()},
        api_overrides={
            "images": {
                "sub_agent": WORKER_IMAGE,
                "allowed": [WORKER_IMAGE],
            },
            "sub_agent": {"command": ["/bin/sh", "-c", AGENT_SCRIPT], "env": {}},
        },
    )


def audit(host) -> list[dict]:
    path = Path(host.token_config["audit_log"])
    return [json.loads(line) for line in path.read_text().splitlines()]


def inspect_all(host, name: str) -> str:
    out = host.podman("inspect", name)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_worker_gets_exactly_its_roles_tokens_and_403_for_an_agent_token(host, probe):
    api = Api(host)
    job_id = api.create(
        {
            "kind": "worker",
            "command": 'printf %s "$GITHUB_TOKEN" | sha256sum; '
            'echo "anthropic=${ANTHROPIC_API_KEY:-unset}"; ' + WAIT_FOR_DONE,
        }
    )
    wait_container_running(host, job_id)
    place_probe(host, job_id, probe)
    inspected = inspect_all(host, job_id)

    # V8: the token socket is reachable from inside; V9: only the worker's tokens.
    default = probe_in(host, job_id)
    assert default == {"status": ["200"], "granted": ["GITHUB_TOKEN"]}
    denied = probe_in(host, job_id, '{"tokens": ["ANTHROPIC_API_KEY"]}')
    assert denied["status"] == ["403"]
    assert "ANTHROPIC_API_KEY" in denied["body"][0]

    (Path(host.api_config["storage"]["workspaces"]) / job_id / "probe.done").touch()
    job = api.wait(job_id, FINAL)
    assert job["status"] == "succeeded", job
    log = api.log(job_id)
    assert sha(SECRETS["GITHUB_TOKEN"]) in log  # the helper set it for the command
    assert "anthropic=unset" in log
    for value in SECRETS.values():
        assert value not in inspected and value not in log

    spiffe_id = f"spiffe://flashpods.internal/job/{job_id}/worker"
    lines = [a for a in audit(host) if a["job"] == job_id]
    assert [a["outcome"] for a in lines] == ["granted", "granted", "forbidden"]
    assert all(a["spiffe_id"] == spiffe_id for a in lines)
    assert lines[2]["refused"] == ["ANTHROPIC_API_KEY"]


def test_sub_agent_starts_its_agent_with_the_agent_tokens(host):
    api = Api(host)
    job_id = api.create({"kind": "sub_agent", "prompt": "say hi"})
    job = api.wait(job_id, FINAL)
    assert job["status"] == "succeeded", job
    log = api.log(job_id)
    assert sha(SECRETS["ANTHROPIC_API_KEY"]) in log
    assert sha(SECRETS["GITHUB_TOKEN"]) in log
    assert "prompt=say hi" in log
    [line] = [a for a in audit(host) if a["job"] == job_id]
    assert line["spiffe_id"] == f"spiffe://flashpods.internal/job/{job_id}/sub_agent"
    assert line["granted"] == ["ANTHROPIC_API_KEY", "GITHUB_TOKEN"]


@pytest.mark.parametrize("user", ["root", "flashpods"])
def test_host_process_outside_any_container_gets_401(host, probe, user):
    api = Api(host)
    job_id = api.create({"kind": "worker", "command": WAIT_FOR_DONE})
    wait_container_running(host, job_id)  # a job runs: the attestor has something to match
    argv = [sys.executable, "-c", HOST_CLIENT, str(host.token_socket)]
    if user != "root":
        argv = ["setpriv", "--reuid", user, "--regid", user, "--init-groups", *argv]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    assert answer["status"] == 401
    assert answer["body"]["check"] == "peer_container"
    (Path(host.api_config["storage"]["workspaces"]) / job_id / "probe.done").touch()
    api.wait(job_id, FINAL)


def test_finished_jobs_identity_gets_nothing(host, probe):
    api = Api(host)
    job_id = api.create({"kind": "worker", "command": WAIT_FOR_DONE})
    wait_container_running(host, job_id)
    place_probe(host, job_id, probe)
    assert probe_in(host, job_id)["status"] == ["200"]
    (Path(host.api_config["storage"]["workspaces"]) / job_id / "probe.done").touch()
    assert api.wait(job_id, FINAL)["status"] == "succeeded"

    # Its container is not running any more: nothing can exec into it.
    assert host.podman("exec", job_id, "true").returncode != 0

    # Re-create a container that claims the finished job (same name and labels, the
    # helper and the token socket mounted as the API would): the helper is refused.
    host.podman("rm", "-f", "-t", "0", job_id)
    # The reaper removes containers of a final job on sight (a defence of its own);
    # pause it so the token service's refusal is what this test sees.
    host.kill("reaper", signal.SIGSTOP)
    helper = host.api_config["helper_path"]
    rerun = host.podman(
        "run", "--name", job_id, "--userns=keep-id", "--init",
        "--label", f"flashpods.job={job_id}", "--label", "flashpods.kind=worker",
        "--label", f"flashpods.instance={host.settings.instance}",
        "-v", f"{helper}:/flashpods/bin/flashpods-init:ro",
        "-v", f"{host.token_socket}:/run/flashpods/token.sock",
        "-e", "FLASHPODS_TOKEN_SOCKET=/run/flashpods/token.sock",
        WORKER_IMAGE, "/flashpods/bin/flashpods-init", "--", "sh", "-c",
        'echo "got=${GITHUB_TOKEN:+yes}"',
    )  # fmt: skip
    try:
        assert rerun.returncode == 125, (rerun.stdout, rerun.stderr)
        assert "got=" not in rerun.stdout
        assert "flashpods-init:" in rerun.stderr
    finally:
        host.podman("rm", "-f", "-t", "0", job_id)
        host.kill("reaper", signal.SIGCONT)
    refused = [a for a in audit(host) if a["outcome"] == "unauthenticated"]
    assert refused and refused[-1]["check"] == "peer_container"


def test_no_secret_value_leaks_anywhere(host, probe):
    api = Api(host)
    worker = api.create(
        {"kind": "worker", "command": "env | cut -d= -f1 > /artifacts/names; " + WAIT_FOR_DONE}
    )
    wait_container_running(host, worker)
    inspected = inspect_all(host, worker)
    (Path(host.api_config["storage"]["workspaces"]) / worker / "probe.done").touch()
    agent = api.create({"kind": "sub_agent", "prompt": "leak check"})
    for job_id in (worker, agent):
        assert api.wait(job_id, FINAL)["status"] == "succeeded"
    names = (Path(host.api_config["storage"]["artifacts"]) / worker / "names").read_text()
    assert "GITHUB_TOKEN" in names.split()  # it was there, by name only

    values = list(SECRETS.values())
    root = Path(host.settings.root)
    secrets_dir = host.paths.secrets_dir
    # DB, job logs, service logs, audit log, workspaces, artifacts, uploads, configs.
    assert grep_tree(root, values, skip={secrets_dir}) == []
    for value in values:
        assert value not in inspected
        for job_id in (worker, agent):
            assert value not in api.log(job_id)
            assert value not in json.dumps(api.job(job_id))
    # The secret files themselves are readable by the token service only.
    for f in secrets_dir.iterdir():
        st = f.stat()
        assert st.st_mode & 0o077 == 0, f
    assert os.access(secrets_dir, os.R_OK)  # root can; flashpods cannot:
    cant = subprocess.run(
        ["setpriv", "--reuid", "flashpods", "--regid", "flashpods", "--init-groups",
         "cat", *[str(p) for p in secrets_dir.iterdir()]],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert cant.returncode != 0 and not any(v in cant.stdout for v in values)
