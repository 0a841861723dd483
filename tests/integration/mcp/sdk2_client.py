"""Run by the python of the mcp 2.x venv that test_mcp_sdk2.py builds (not a test module):
drives `flashpods-mcp` of that venv over stdio with that SDK's own client and prints
what came back, as one JSON object on stdout. Argument: a JSON object with `server`,
`env` and `root` (the project directory offered as the client's one root)."""

import json
import sys
from importlib.metadata import version
from pathlib import Path

import anyio
from mcp.client.stdio import stdio_client
from mcp.types import ListRootsResult, Root

from mcp import ClientSession, StdioServerParameters


def outcome(result) -> dict:
    """A tool result as plain data (2.x names the fields in snake_case)."""
    return {
        "is_error": result.is_error,
        "text": result.content[0].text if result.content else "",
        "structured": result.structured_content,
    }


async def main(spec: dict) -> dict:
    params = StdioServerParameters(command=spec["server"], env=spec["env"])
    root = Path(spec["root"])
    progress: list[float] = []

    async def list_roots(_ctx) -> ListRootsResult:
        return ListRootsResult(roots=[Root(uri=root.as_uri(), name=root.name)])

    async def on_progress(done: float, _total: float | None, _message: str | None) -> None:
        progress.append(done)

    async with (
        stdio_client(params) as (read, write),
        ClientSession(read, write, list_roots_callback=list_roots) as session,
    ):
        initialized = await session.initialize()
        tools = await session.list_tools()
        listed = await session.call_tool("list_jobs", {"limit": 5})
        # A call that needs the session itself: roots (for the upload) and progress.
        spawned = await session.call_tool(
            "spawn_worker",
            {"command": "cat data.txt > /artifacts/copy.txt"},
            progress_callback=on_progress,
        )
        job_id = spawned.structured_content["job"]["id"]
        offset = 0
        for _ in range(30):
            out = await session.call_tool(
                "get_job_output", {"job_id": job_id, "offset": offset, "wait_s": 5}
            )
            offset = out.structured_content["next_offset"]
            if out.structured_content["final"]:
                break
        artifacts = await session.call_tool("get_job_artifacts", {"job_id": job_id})
    return {
        "sdk": version("mcp"),
        "server": initialized.server_info.name,
        "tools": sorted(t.name for t in tools.tools),
        "list_jobs": outcome(listed),
        "spawn_worker": outcome(spawned),
        "get_job_artifacts": outcome(artifacts),
        "progress_notes": len(progress),
    }


if __name__ == "__main__":
    print(json.dumps(anyio.run(main, json.loads(sys.argv[1]))))
