"""The whole path from the laptop: an MCP client drives `flashpods-mcp`, which uploads with
rsync and starts a real Claude Code sub-agent through the API; the agent's artifact and
its workspace change come back into a local directory through get_job_artifacts.

The MCP server runs as a stdio subprocess inside the dev host's network namespace (it
reaches the API and rsyncd on 127.0.0.1 there, as the laptop reaches them over WireGuard).
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path

import anyio
import pytest
from mcp.client.stdio import stdio_client

from mcp import ClientSession, StdioServerParameters

pytestmark = [pytest.mark.slow, pytest.mark.root]

MCP_SERVER = "/opt/flashpods/venv/bin/flashpods-mcp"
FINAL = {"succeeded", "failed", "timed_out", "killed", "lost"}


async def _drive(params: StdioServerParameters, project: Path, dest: Path) -> dict:
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        spawned = await session.call_tool(
            "spawn_sub_agent",
            {
                "prompt": "Answer from input.txt. [[script:mcp]]",
                "path": str(project),
                "timeout_s": 300,
            },
        )
        assert not spawned.isError, spawned.content
        job_id = spawned.structuredContent["job"]["id"]
        deadline = time.monotonic() + 180
        while True:
            status = await session.call_tool("get_job_status", {"job_id": job_id})
            assert not status.isError, status.content
            if status.structuredContent["status"] in FINAL:
                break
            assert time.monotonic() < deadline, status.structuredContent
            await anyio.sleep(0.5)
        output = await session.call_tool("get_job_output", {"job_id": job_id, "max_bytes": 1048576})
        fetched = await session.call_tool(
            "get_job_artifacts", {"job_id": job_id, "dest": str(dest)}
        )
        assert not fetched.isError, fetched.content
        return {
            "status": status.structuredContent,
            "output": output.structuredContent,
            "artifacts": fetched.structuredContent,
        }


def test_sub_agent_started_through_the_mcp_server(subagent_host, model, tmp_path):
    api = subagent_host()
    word = f"kiwi{secrets.token_hex(3)}"
    project = tmp_path / "project"
    project.mkdir()
    (project / "input.txt").write_text(f"secret={word}\n")
    (project / "notes.md").write_text("status: todo\n")
    dest = tmp_path / "results"
    model.model.scripts["mcp"] = [
        {"tool_uses": [{"name": "Read", "input": {"file_path": "/workspace/input.txt"}}]},
        {"tool_uses": [{"name": "Read", "input": {"file_path": "/workspace/notes.md"}}]},
        {
            "tool_uses": [
                {
                    "name": "Edit",
                    "input": {
                        "file_path": "/workspace/notes.md",
                        "old_string": "todo",
                        "new_string": "answered",
                    },
                },
                {
                    "name": "Write",
                    "input": {
                        "file_path": "/artifacts/answer.txt",
                        "content": "{{find:secret=(\\w+)}}\n",
                    },
                },
            ]
        },
        {"text": "Answered."},
    ]
    params = StdioServerParameters(
        command="nsenter",
        args=[f"--net={api.lab.path(api.lab.host)}", "--", MCP_SERVER],
        env={
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(tmp_path / "home"),
            "FLASHPODS_API_URL": api.host.api_url,
            "FLASHPODS_API_TOKEN": api.host.api_token,
            "FLASHPODS_RSYNC_URL": api.host.rsync_url,
            "FLASHPODS_ALLOWED_PATHS": str(tmp_path),
        },
    )
    got = anyio.run(_drive, params, project, dest)

    assert got["status"]["status"] == "succeeded", got
    assert (dest / "answer.txt").read_text() == f"{word}\n"
    assert (dest / "_workspace" / "files" / "notes.md").read_text() == "status: answered\n"
    changes = json.loads((dest / "_workspace" / "changes.json").read_text())
    assert changes["modified"] == ["notes.md"]
    summary = json.loads((dest / "summary.json").read_text())
    assert summary["ok"] is True and summary["result"] == "Answered."
    # get_job_output shows the transcript.
    assert '"type":"result"' in got["output"]["text"]
    assert "flashpods-agent: ok" in got["output"]["text"]
    # The laptop's project is untouched: the agent worked on the host's copy.
    assert (project / "notes.md").read_text() == "status: todo\n"
    key = api.host.settings.secrets["ANTHROPIC_API_KEY"]
    seen = [r for r in model.model.message_requests() if r["script"] == "mcp"]
    assert seen and {r["headers"].get("x-api-key") for r in seen} == {key}
