"""Helpers for the token service's integration tests: an API client, the probe, and
podman as the flashpods user through the dev host."""

from __future__ import annotations

import re
import secrets
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import requests

FINAL = {"succeeded", "failed", "timed_out", "killed", "lost"}
WORKER_IMAGE = "localhost/flashpods-worker:latest"
PROBE_SRC = Path(__file__).with_name("probe.c")
TRICKLE_SRC = Path(__file__).with_name("trickle.c")
BUILD_HELPER = Path(__file__).resolve().parents[3] / "scripts" / "lib" / "build-helper.sh"


def unique_secrets() -> dict[str, str]:
    tag = secrets.token_hex(6)
    return {"ANTHROPIC_API_KEY": f"sk-tokint-{tag}-anthropic", "GITHUB_TOKEN": f"ghp-tokint-{tag}"}


def build_static(src: Path, out_dir: Path) -> Path:
    """A static binary of one C file, to run inside any job image."""
    out = out_dir / src.stem
    subprocess.run(
        ["gcc", "-static", "-O2", "-Wall", "-o", str(out), str(src)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    out.chmod(0o755)
    return out


def build_probe(out_dir: Path) -> Path:
    return build_static(PROBE_SRC, out_dir)


def build_helper(out_dir: Path) -> Path:
    """flashpods-init of this checkout (the shared /opt/flashpods/lib one may be older).

    out_dir must be traversable by the flashpods user: containers mount the binary."""
    out = out_dir / "flashpods-init"
    subprocess.run([str(BUILD_HELPER), str(out)], check=True, capture_output=True, timeout=300)
    return out


class Api:
    def __init__(self, host) -> None:
        self.url = host.api_url
        self.s = requests.Session()
        self.s.headers["Authorization"] = f"Bearer {host.api_token}"

    def create(self, body: dict[str, Any]) -> str:
        r = self.s.post(f"{self.url}/jobs", json=body, timeout=30)
        assert r.status_code == 201, r.text
        return r.json()["job"]["id"]

    def job(self, job_id: str) -> dict[str, Any]:
        r = self.s.get(f"{self.url}/jobs/{job_id}", timeout=30)
        assert r.status_code == 200, r.text
        return r.json()["job"]

    def wait(self, job_id: str, statuses: set[str], timeout_s: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.job(job_id)
            if job["status"] in statuses:
                return job
            assert time.monotonic() < deadline, f"{job_id} still {job['status']}"
            time.sleep(0.1)

    def log(self, job_id: str) -> str:
        text, offset = "", 0
        while True:
            r = self.s.get(f"{self.url}/jobs/{job_id}/logs", params={"offset": offset}, timeout=30)
            page = r.json()
            text += page["data"]
            if page["next_offset"] == offset or page["final"]:
                return text
            offset = page["next_offset"]


def wait_container_running(host, name: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        out = host.podman("inspect", "--format", "{{.State.Running}}", name)
        if out.returncode == 0 and out.stdout.strip() == "true":
            return
        time.sleep(0.1)
    raise AssertionError(f"container {name} never ran")


def place_probe(host, job_id: str, probe: Path) -> None:
    """Put the probe into the job's workspace (mounted at /workspace)."""
    dest = Path(host.api_config["storage"]["workspaces"]) / job_id / "probe"
    shutil.copy(probe, dest)
    dest.chmod(0o755)


AGENT_CLI_IN_JOB = "/flashpods/bin/spire-agent"
AGENT_SOCKET_IN_JOB = "/run/spire/sockets/agent.sock"
SVID_RE = re.compile(r"token\((spiffe://[^)]*)\):\s+(\S+)")


def fetch_svid_in(host, job_id: str, *extra: str) -> subprocess.CompletedProcess:
    """`spire-agent api fetch jwt` inside a job's container (spire mode: the API mounted
    the agent's socket and the static CLI), i.e. as that job's PID namespace."""
    return host.podman(
        "exec", job_id, AGENT_CLI_IN_JOB, "api", "fetch", "jwt", "-audience", "flashpods-token",
        "-socketPath", AGENT_SOCKET_IN_JOB, "-timeout", "5s", *extra,
    )  # fmt: skip


def svid_in(host, job_id: str, timeout_s: float = 60) -> str:
    """The job's own JWT-SVID from the real agent (retried: a new entry reaches the
    agent on its next sync)."""
    deadline = time.monotonic() + timeout_s
    while True:
        out = fetch_svid_in(host, job_id)
        found = SVID_RE.search(out.stdout)
        if out.returncode == 0 and found:
            return found.group(2)
        assert time.monotonic() < deadline, f"no SVID for {job_id}: {out.stderr}"
        time.sleep(0.3)


def is_spire(host) -> bool:
    return host.settings.attestation == "spire"


def probe_in(host, job_id: str, body: str = "") -> dict[str, list[str]]:
    """The probe inside the job; in spire mode it sends the job's own JWT-SVID."""
    env = ["-e", f"PROBE_BEARER={svid_in(host, job_id)}"] if is_spire(host) else []
    out = host.podman("exec", *env, job_id, "/workspace/probe", "/run/flashpods/token.sock", body)
    assert out.returncode == 0, out.stderr
    parsed: dict[str, list[str]] = {}
    for line in out.stdout.splitlines():
        key, _, value = line.partition("=")
        parsed.setdefault(key, []).append(value)
    return parsed


def grep_tree(root: Path, needles: list[str], skip: set[Path]) -> list[str]:
    """Files under root (not under skip) whose bytes contain any needle."""
    hits = []
    raw = [n.encode() for n in needles]
    for path in root.rglob("*"):
        if any(path == s or s in path.parents for s in skip):
            continue
        if path.is_file() and not path.is_symlink():
            try:
                data = path.read_bytes()
            except OSError:
                continue
            hits += [f"{path}: {n.decode()}" for n in raw if n in data]
    return hits


def wait_for(what: str, check, timeout_s: float = 60, logs: list[Path] = ()) -> None:
    """Poll check() until true; on timeout fail with `what` and the tails of logs."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    tails = "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in logs if p.exists())
    raise AssertionError(f"{what} within {timeout_s:.0f} s\n{tails}")
