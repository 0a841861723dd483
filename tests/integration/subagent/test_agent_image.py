"""The agent image on its own (plain rootless `podman run` as the flashpods user).

What the entrypoint does before the model is ever called: refuse to run without a
credential or a writable TMPDIR (Claude Code would otherwise exit 0 having done nothing),
and what the build recorded about its inputs.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import tempfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.root]

PODMAN_ENV = ["HOME=/home/flashpods", "XDG_RUNTIME_DIR=/run/user/1001", "PATH=/usr/bin:/bin"]
EXIT_CONFIG = 64
REPO = Path(__file__).resolve().parents[3]


def podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    argv = ["runuser", "-u", "flashpods", "--", "env", "-i", *PODMAN_ENV, "podman", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd="/")


@pytest.fixture
def artifacts_dir():
    base = Path(tempfile.mkdtemp(prefix="fpa-image-", dir="/var/tmp"))
    os.chmod(base, 0o777)  # the container's keep-id uid writes here
    yield base
    podman("unshare", "rm", "-rf", str(base))
    subprocess.run(["rm", "-rf", str(base)], check=False)


def run_entrypoint(
    image: str, artifacts: Path, *extra: str, env: dict[str, str]
) -> subprocess.CompletedProcess:
    name = f"fpa-image-{secrets.token_hex(4)}"
    args = [
        "run", "--rm", "--name", name, "--label", f"flashpods.instance={name}",
        "--userns=keep-id", "--network=none", "--security-opt", "no-new-privileges",
        "--cap-drop", "ALL", "--read-only", *extra,
        "--mount", f"type=bind,source={artifacts},destination=/artifacts",
    ]  # fmt: skip
    for key, value in env.items():
        args += ["--env", f"{key}={value}"]
    try:
        # Every case here ends before the model would be called; the timeout is a backstop.
        return podman(*args, image, "/flashpods/agent/entrypoint", timeout=60)
    finally:
        podman("rm", "-f", "-t", "0", "--ignore", name)


def test_image_records_its_inputs_and_carries_the_pinned_claude_code(agent_image):
    labels = json.loads(
        podman("image", "inspect", "--format", "{{json .Labels}}", agent_image).stdout
    )
    stamp = Path("/var/cache/flashpods/agent-image/stamp").read_text().strip()
    assert labels["flashpods.inputs"] == stamp
    build_sh = (REPO / "images" / "agent" / "build.sh").read_text()
    pinned = build_sh.split("FLASHPODS_CLAUDE_CODE_VERSION:-", 1)[1].split("}", 1)[0]
    assert labels["flashpods.claude-code"] == pinned
    version = podman("run", "--rm", "--network=none", agent_image, "claude", "--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith(pinned)
    # A second build with the same inputs is a no-op.
    again = subprocess.run(
        [str(REPO / "images/agent/build.sh")], capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 0 and "is up to date" in again.stderr


def test_entrypoint_refuses_to_run_without_a_credential(agent_image, artifacts_dir):
    run = run_entrypoint(
        agent_image,
        artifacts_dir,
        "--tmpfs",
        "/tmp:rw,size=64m,mode=1777",
        env={"FLASHPODS_PROMPT": "hello", "HOME": "/tmp/home", "TMPDIR": "/tmp"},
    )
    assert run.returncode == EXIT_CONFIG, run.stderr
    assert "no Anthropic credential" in run.stderr and "roles.sub_agent" in run.stderr
    summary = json.loads((artifacts_dir / "summary.json").read_text())
    assert summary["exit_reason"] == "config_error" and summary["ok"] is False


def test_entrypoint_refuses_an_unwritable_tmpdir(agent_image, artifacts_dir):
    # No tmpfs on /tmp under --read-only (Podman adds one unless told not to): Claude Code
    # would exit 0 without doing anything.
    run = run_entrypoint(
        agent_image,
        artifacts_dir,
        "--read-only-tmpfs=false",
        env={
            "FLASHPODS_PROMPT": "hello",
            "ANTHROPIC_API_KEY": "sk-x",
            "TMPDIR": "/tmp",
            "HOME": "/tmp/home",
        },
    )
    assert run.returncode == EXIT_CONFIG
    assert (
        "cannot create HOME=/tmp/home" in run.stderr or "TMPDIR=/tmp is not writable" in run.stderr
    )


def test_entrypoint_refuses_an_empty_prompt_and_bad_caps(agent_image, artifacts_dir):
    base = {"ANTHROPIC_API_KEY": "sk-x", "HOME": "/tmp/home", "TMPDIR": "/tmp"}
    tmpfs = ("--tmpfs", "/tmp:rw,size=64m,mode=1777")
    empty = run_entrypoint(agent_image, artifacts_dir, *tmpfs, env=base | {"FLASHPODS_PROMPT": " "})
    assert empty.returncode == EXIT_CONFIG and "FLASHPODS_PROMPT is empty" in empty.stderr
    bad = run_entrypoint(
        agent_image,
        artifacts_dir,
        *tmpfs,
        env=base | {"FLASHPODS_PROMPT": "hi", "FLASHPODS_AGENT_MAX_TURNS": "lots"},
    )
    assert bad.returncode == EXIT_CONFIG and "FLASHPODS_AGENT_MAX_TURNS='lots'" in bad.stderr


def test_entrypoint_runs_claude_code_as_root_too(agent_image, artifacts_dir):
    """Without keep-id the job is root, where Claude Code refuses to skip permission
    prompts unless IS_SANDBOX is set; the entrypoint sets it, so the run reaches the model
    (here: no model at all, network none, so it ends with an API error, not a refusal)."""
    name = f"fpa-image-{secrets.token_hex(4)}"
    args = [
        "run", "--rm", "--name", name, "--label", f"flashpods.instance={name}",
        "--network=none", "--read-only", "--tmpfs", "/tmp:rw,size=64m,mode=1777",
        "--mount", f"type=bind,source={artifacts_dir},destination=/artifacts",
        "--env", "FLASHPODS_PROMPT=hello", "--env", "ANTHROPIC_API_KEY=sk-x",
        "--env", "ANTHROPIC_BASE_URL=http://127.0.0.1:9", "--env", "CLAUDE_CODE_MAX_RETRIES=0",
    ]  # fmt: skip
    try:
        run = podman(*args, agent_image, "/flashpods/agent/entrypoint", timeout=90)
    finally:
        podman("rm", "-f", "-t", "0", "--ignore", name)
    assert "cannot be used with root" not in run.stdout + run.stderr
    summary = json.loads((artifacts_dir / "summary.json").read_text())
    assert summary["exit_reason"] == "api_error", summary
    assert run.returncode == 1
