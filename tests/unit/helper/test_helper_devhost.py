"""flashpods-init against the real thing: a dev host (real API, real token
service in peer mode, rootless Podman) started through the devhost launcher,
with the helper built by these tests."""

from __future__ import annotations

import hashlib
import time
import uuid

import pytest
import requests
from helper_support import WORKER_IMAGE

pytestmark = [pytest.mark.slow, pytest.mark.root]

FINAL = {"succeeded", "failed", "timed_out", "killed", "lost"}


def start_host(devhost_factory, helper):
    return devhost_factory(
        api_overrides={"reaper": {"interval_s": 0.2}, "helper_path": str(helper)}
    )


def run_worker(host, command: str, timeout_s: float = 120) -> tuple[dict, str]:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {host.api_token}"
    created = session.post(
        f"{host.api_url}/jobs", json={"kind": "worker", "command": command}, timeout=30
    )
    assert created.status_code == 201, created.text
    job_id = created.json()["job"]["id"]
    deadline = time.monotonic() + timeout_s
    while True:
        job = session.get(f"{host.api_url}/jobs/{job_id}", timeout=30).json()["job"]
        if job["status"] in FINAL:
            break
        assert time.monotonic() < deadline, f"job {job_id} still {job['status']}"
        time.sleep(0.2)
    log, offset = "", 0
    while True:
        page = session.get(
            f"{host.api_url}/jobs/{job_id}/logs", params={"offset": offset}, timeout=30
        ).json()
        log += page["data"]
        if page["next_offset"] == offset or page["final"]:
            return job, log
        offset = page["next_offset"]


def test_api_job_gets_exactly_its_roles_secrets(helper, devhost_factory):
    host = start_host(devhost_factory, helper)
    github = host.settings.secrets["GITHUB_TOKEN"]

    job, log = run_worker(
        host,
        'printf %s "$GITHUB_TOKEN" | sha256sum; echo "anthropic=[${ANTHROPIC_API_KEY:-}]"',
    )

    assert job["status"] == "succeeded", log
    assert hashlib.sha256(github.encode()).hexdigest() in log
    assert "anthropic=[]" in log  # a worker's role is not granted it
    assert github not in log


def test_container_not_started_by_the_api_gets_nothing(helper, devhost_factory):
    # Same user, same image, the token socket mounted: but no job label the
    # token service knows, so the kernel-attested exchange is refused.
    host = start_host(devhost_factory, helper)
    name = f"helper-intruder-{uuid.uuid4().hex[:10]}"
    helper_mount = f"type=bind,source={helper},destination=/flashpods/bin/flashpods-init,ro=true"
    socket_mount = f"type=bind,source={host.token_socket},destination=/run/flashpods/token.sock"
    try:
        result = host.podman(
            "run", "--name", name,
            "--label", f"flashpods.instance={host.settings.instance}-intruder",
            "--userns=keep-id", "--init", "--network", "none",
            "--mount", helper_mount, "--mount", socket_mount,
            "-e", "FLASHPODS_TOKEN_SOCKET=/run/flashpods/token.sock",
            "-e", "FLASHPODS_ATTESTATION=peer", "-e", "HOME=/tmp/home",
            WORKER_IMAGE, "/flashpods/bin/flashpods-init", "--", "sh", "-c", "echo RAN",
        )  # fmt: skip
    finally:
        host.podman("rm", "-f", "--ignore", name)

    assert result.returncode == 125, result.stderr
    assert "RAN" not in result.stdout
    assert "flashpods-init: the token service refused the exchange: HTTP 401" in result.stderr
    assert host.settings.secrets["GITHUB_TOKEN"] not in result.stderr
