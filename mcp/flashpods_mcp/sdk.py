"""The one module that knows which major version of the MCP Python SDK is installed.

mcp 1.x (what the pinned nixpkgs and requirements.lock carry) calls the high-level
server `FastMCP` in `mcp.server.fastmcp`; mcp 2.x renamed it `MCPServer` in
`mcp.server.mcpserver` and made `mcp.server.fastmcp` an import error that points at
the migration guide. Everything else this package uses is the same in both: the
constructor's `instructions` and `log_level`, `@tool(annotations=...)` with an
`Annotated[CallToolResult, Model]` return, `run("stdio")`, `Context.session`
(`check_client_capability`, `list_roots`) and `Context.report_progress`, and the
`mcp.types` models, which in 2.x take the same camelCase names as aliases of their
snake_case fields. tests/integration/mcp/test_mcp_sdk2.py proves it against a real
2.x install.
"""

from __future__ import annotations

from typing import Any

try:  # mcp 2.x
    from mcp.server.mcpserver import Context, MCPServer

    SDK_MAJOR = 2
except ImportError:  # mcp 1.x
    # A redefinition only where mypy sees mcp 2.x (mypy.ini: the lock's 1.x has no mcpserver).
    from mcp.server.fastmcp import Context  # type: ignore[no-redef, unused-ignore]
    from mcp.server.fastmcp import FastMCP as MCPServer  # type: ignore[no-redef, unused-ignore]

    SDK_MAJOR = 1

__all__ = ["SDK_MAJOR", "Context", "new_server"]


def new_server(name: str, instructions: str) -> Any:
    """The high-level server of whichever SDK is installed, logging warnings only."""
    return MCPServer(name, instructions=instructions, log_level="WARNING")
