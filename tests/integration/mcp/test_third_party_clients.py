"""Real third-party MCP clients (installed from npm by scripts/lib/install-node-tools.sh):
the MCP Inspector's CLI mode and Claude Code's `claude mcp add` / `claude mcp list`."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.root]  # a real dev host needs root
SERVER = str(Path(sys.executable).parent / "flashpods-mcp")
# Claude Code without a model: no telemetry, no update checks, no other traffic.
QUIET_CLAUDE = {
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "DISABLE_TELEMETRY": "1",
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_ERROR_REPORTING": "1",
}


def inspector(node_tools, laptop, laptop_env, *method_args):
    env_args = []
    for key, value in {**laptop_env, "FLASHPODS_ALLOWED_PATHS": str(laptop / "project")}.items():
        env_args += ["-e", f"{key}={value}"]
    done = subprocess.run(
        [node_tools("mcp-inspector"), "--cli", *env_args, SERVER, *method_args],
        env={"HOME": str(laptop), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    return json.loads(done.stdout)


def test_inspector_lists_and_calls_tools(node_tools, laptop, laptop_env):
    listed = inspector(node_tools, laptop, laptop_env, "--method", "tools/list")
    assert {t["name"] for t in listed["tools"]} == {
        "spawn_worker",
        "spawn_sub_agent",
        "get_job_status",
        "get_job_output",
        "get_job_artifacts",
        "kill_job",
        "list_jobs",
    }
    spawned = inspector(
        node_tools,
        laptop,
        laptop_env,
        "--method",
        "tools/call",
        "--tool-name",
        "spawn_worker",
        "--tool-arg",
        "command=cat data.txt",
        "--tool-arg",
        f"path={laptop / 'project'}",
    )
    assert not spawned.get("isError"), spawned
    job_id = spawned["structuredContent"]["job"]["id"]
    output = inspector(
        node_tools,
        laptop,
        laptop_env,
        "--method",
        "tools/call",
        "--tool-name",
        "get_job_output",
        "--tool-arg",
        f"job_id={job_id}",
        "--tool-arg",
        "wait_s=60",
    )
    assert "hello from the laptop" in output["structuredContent"]["text"]
    jobs = inspector(
        node_tools,
        laptop,
        laptop_env,
        "--method",
        "tools/call",
        "--tool-name",
        "list_jobs",
        "--tool-arg",
        "limit=5",
    )
    assert job_id in [j["id"] for j in jobs["structuredContent"]["jobs"]]
    assert job_id in jobs["content"][0]["text"]


def test_claude_code_reports_the_server_connected(node_tools, laptop, laptop_env, tmp_path):
    claude_home = tmp_path / "claude-home"  # never root's own ~/.claude.json
    claude_home.mkdir()
    env = {"HOME": str(claude_home), "PATH": "/usr/bin:/bin", **QUIET_CLAUDE}
    env_args = []
    for key, value in laptop_env.items():
        env_args += ["-e", f"{key}={value}"]
    added = subprocess.run(
        [node_tools("claude"), "mcp", "add", "flashpods", *env_args, "--", SERVER],
        env=env,
        cwd=laptop / "project",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert added.returncode == 0, added.stderr + added.stdout
    listed = subprocess.run(
        [node_tools("claude"), "mcp", "list"],
        env=env,
        cwd=laptop / "project",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert listed.returncode == 0, listed.stderr + listed.stdout
    line = next(ln for ln in listed.stdout.splitlines() if ln.startswith("flashpods:"))
    assert "Connected" in line, listed.stdout
