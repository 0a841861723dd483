"""Fixtures for the flashpods-init tests: the helper built by the real build
script into a temporary place, a scratch directory, a stand-in token service."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from helper_standin import Responder, TokenServer  # noqa: E402
from helper_support import BUILD_SCRIPT, make_root  # noqa: E402


@pytest.fixture(scope="session")
def helper() -> Iterator[Path]:
    """The helper, built by scripts/lib/build-helper.sh (FLASHPODS_HELPER_OUT).

    FLASHPODS_HELPER_TEST_BINARY=<path> runs the behaviour tests against another
    build instead, e.g. one with -fsanitize=address,undefined (the build-script
    tests then fail on purpose: that binary is not static)."""
    override = os.environ.get("FLASHPODS_HELPER_TEST_BINARY")
    if override:
        yield Path(override)
        return
    root = make_root("helper-bin")
    out = root / "flashpods-init"
    env = dict(os.environ, FLASHPODS_HELPER_OUT=str(out))
    subprocess.run([str(BUILD_SCRIPT)], env=env, check=True, capture_output=True, timeout=300)
    yield out
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A fresh world-traversable directory, removed after the test."""
    root = make_root("helper")
    yield root
    # Tests chmod things 000 and hand them to the flashpods user: make
    # everything removable by root first.
    subprocess.run(["chmod", "-R", "u+rwX", str(root)], check=False)
    shutil.rmtree(root, ignore_errors=True)


StartServer = Callable[..., TokenServer]


@pytest.fixture
def token_server(workdir: Path) -> Iterator[StartServer]:
    """Factory: token_server(responder, mode=0o600, name="token.sock") starts a
    stand-in token service on a socket in workdir; all are closed afterwards."""
    servers: list[TokenServer] = []

    def start(responder: Responder, mode: int = 0o600, name: str = "token.sock") -> TokenServer:
        server = TokenServer(workdir / name, responder, mode=mode)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()
