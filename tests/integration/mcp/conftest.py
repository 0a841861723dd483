"""Fixtures for the MCP end-to-end tests: one real dev host per module (API under
gunicorn, reaper, rsyncd, token service, rootless Podman), a laptop-side HOME, and a
real MCP client session (the SDK's stdio client launching `flashpods-mcp`)."""

from __future__ import annotations

import os
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from flashpods_devhost.host import SERVICE_ORDER, DevHost
from flashpods_devhost.pytest_plugin import new_settings
from mcp.client.stdio import stdio_client
from mcp.types import ListRootsResult, Root
from pydantic import FileUrl

from mcp import ClientSession, StdioServerParameters

VENV_BIN = Path(sys.executable).parent
WORKER_IMAGE = "localhost/flashpods-worker:latest"
# The sub-agent runs the way the real one does (agent.command argv, prompt in
# FLASHPODS_PROMPT, /workspace and /artifacts mounted); here a shell stands in for
# Claude Code so no model is needed.
AGENT_COMMAND = [
    "sh",
    "-c",
    'echo "agent prompt: $FLASHPODS_PROMPT"; ls /workspace; '
    'echo "$FLASHPODS_PROMPT" > /artifacts/prompt.txt',
]


@pytest.fixture(scope="module")
def host(request):
    """One dev host for the module: starting one per test would dominate the run time.

    Built exactly like `devhost_factory` builds its hosts (same settings helper, same
    stop/remove), just with module scope; logs are printed when a test failed.
    """
    settings = new_settings(
        api_overrides={
            "reaper": {"interval_s": 0.2},
            "images": {"sub_agent": WORKER_IMAGE},
            "sub_agent": {"command": AGENT_COMMAND},
        }
    )
    dev_host = DevHost(settings)
    failed_before = request.session.testsfailed
    try:
        dev_host.start()
        yield dev_host
    finally:
        if request.session.testsfailed > failed_before:
            for name in SERVICE_ORDER:
                print(f"--- {name}.log ---\n{dev_host.log(name)}", file=sys.stderr)
        dev_host.stop(remove_root=os.environ.get("FLASHPODS_TEST_KEEP_ROOT") != "1")


@pytest.fixture
def laptop(tmp_path):
    """A laptop-side HOME with a project directory and the usual secret dirs."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text("PRIVATE KEY")
    project = home / "project"
    project.mkdir()
    (project / "data.txt").write_text("hello from the laptop\n")
    (project / ".gitignore").write_text("*.tmp\n")
    (project / "scratch.tmp").write_text("must not be uploaded\n")
    return home


@pytest.fixture
def laptop_env(host, laptop):
    """The MCP server's environment: everything from the host, HOME on the laptop."""
    token_file = laptop / "api-token"
    token_file.write_text(host.api_token + "\n")
    return {
        "HOME": str(laptop),
        "FLASHPODS_API_URL": host.api_url,
        "FLASHPODS_API_TOKEN_FILE": str(token_file),
        "FLASHPODS_RSYNC_URL": host.rsync_url,
    }


@asynccontextmanager
async def mcp_session(env: dict[str, str], roots: list[Path] | None):
    params = StdioServerParameters(
        command=str(VENV_BIN / "flashpods-mcp"), env={"PATH": os.environ["PATH"], **env}
    )

    async def list_roots(_ctx) -> ListRootsResult:
        return ListRootsResult(roots=[Root(uri=FileUrl(p.as_uri()), name=p.name) for p in roots])

    async with (
        stdio_client(params) as (read, write),
        ClientSession(
            read, write, list_roots_callback=list_roots if roots is not None else None
        ) as session,
    ):
        await session.initialize()
        yield session


@pytest.fixture
def open_mcp():
    return mcp_session


def node_tool(name: str) -> str:
    """A binary installed by scripts/lib/install-node-tools.sh (fails with the fix)."""
    path = Path(os.environ.get("FLASHPODS_NODE_TOOLS", "/opt/flashpods/node")) / "bin" / name
    if not path.exists():
        pytest.fail(f"{path} is missing: run scripts/lib/install-node-tools.sh")
    return str(path)


@pytest.fixture
def node_tools():
    return node_tool


def wait_for(predicate, timeout=60.0, interval=0.3):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


@pytest.fixture
def until():
    return wait_for
