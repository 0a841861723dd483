"""Fixtures of the credential proxy's tests (needs root: namespaces, nftables, users).

The dev host runs in its own network namespace with the project's firewall and the
proxy (netlab.py from the sub-agent tests: `host` and `internet`); stand-in HTTPS
origins for GitHub, the Messages API and a host with no rule listen on 203.0.113.10
in the internet namespace, and the proxy pins those names there (`static_hosts`).
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "subagent"))

from netlab import MODEL_ADDR, Netlab  # noqa: E402
from proxy_support import (  # noqa: E402
    AGENT_IMAGE,
    BUILD_HELPER,
    FIREWALL_VALUES,
    GITHUB_HOSTS,
    MODEL_HOST,
    OTHER_HOST,
    unique_keys,
)
from standin_https import StandinOrigin  # noqa: E402
from subagent_support import HostApi  # noqa: E402


@pytest.fixture
def lab() -> Iterator[Netlab]:
    if os.geteuid() != 0:
        pytest.fail("the proxy tests need root (network namespaces, nftables, user switching)")
    with Netlab() as netlab:
        yield netlab


@pytest.fixture
def origin(lab: Netlab) -> Iterator[StandinOrigin]:
    with tempfile.TemporaryDirectory(prefix="fp-proxy-origin-", dir="/var/tmp") as tmp:
        os.chmod(tmp, 0o755)
        server = StandinOrigin(
            MODEL_ADDR, lab.path(lab.inet), [*GITHUB_HOSTS, MODEL_HOST, OTHER_HOST], Path(tmp)
        )
        try:
            yield server
        finally:
            server.close()


@pytest.fixture(scope="session")
def helper_path() -> Iterator[str]:
    """flashpods-init of this checkout (the relay is new); traversable by the job user."""
    with tempfile.TemporaryDirectory(prefix="fp-proxy-helper-", dir="/var/tmp") as tmp:
        os.chmod(tmp, 0o755)
        out = Path(tmp) / "flashpods-init"
        subprocess.run([str(BUILD_HELPER), str(out)], check=True, capture_output=True, timeout=300)
        yield str(out)


@pytest.fixture
def proxy_host(
    lab: Netlab, origin: StandinOrigin, helper_path: str, devhost_factory: Callable
) -> Iterator[Callable[..., tuple[HostApi, dict[str, str]]]]:
    """A dev host in the lab with the proxy on; returns (api, the real keys)."""
    apis: list[HostApi] = []

    def make(
        proxy: dict | None = None, api: dict | None = None, **overrides: object
    ) -> tuple[HostApi, dict[str, str]]:
        keys = unique_keys()
        host = devhost_factory(
            netns=lab.host,
            firewall=True,
            firewall_values=FIREWALL_VALUES,
            secrets=keys,
            roles={"worker": ["GITHUB_TOKEN"], "sub_agent": ["ANTHROPIC_API_KEY", "GITHUB_TOKEN"]},
            token_overrides={
                "proxy": {
                    "rules": {"GITHUB_TOKEN": GITHUB_HOSTS, "ANTHROPIC_API_KEY": [MODEL_HOST]},
                    "static_hosts": {
                        name: MODEL_ADDR for name in (*GITHUB_HOSTS, MODEL_HOST, OTHER_HOST)
                    },
                    "upstream_ca_file": str(origin.ca_file),
                }
                | (proxy or {})
            },
            api_overrides={
                "reaper": {"interval_s": 0.2},
                "kill_grace_s": 2,
                "helper_path": helper_path,
            }
            | (api or {}),
            **overrides,
        )
        api = HostApi(host, lab)
        apis.append(api)
        return api, keys

    yield make
    for api in apis:
        api.close()


@pytest.fixture
def usage_dir() -> Iterator[Path]:
    """Where the proxy keeps per-job usage (made by the proxy itself, as the token user)."""
    with tempfile.TemporaryDirectory(prefix="fp-proxy-usage-", dir="/var/tmp") as tmp:
        os.chmod(tmp, 0o755)
        os.chown(tmp, pwd.getpwnam("flashpods-token").pw_uid, -1)
        yield Path(tmp) / "usage"


@pytest.fixture(scope="session")
def agent_image() -> str:
    """The agent image (with gh), built (or found up to date) by the script CI runs.

    FLASHPODS_AGENT_IMAGE (with its own FLASHPODS_IMAGE_CACHE), which build.sh reads too,
    builds and tests another tag: a branch that changes the image's inputs can then run
    beside others on one machine without rebuilding the shared tag back and forth."""
    build_sh = Path(__file__).resolve().parents[3] / "images" / "agent" / "build.sh"
    build = subprocess.run([str(build_sh)], capture_output=True, text=True, timeout=1800)
    assert build.returncode == 0, f"images/agent/build.sh failed:\n{build.stderr[-3000:]}"
    return os.environ.get("FLASHPODS_AGENT_IMAGE", AGENT_IMAGE)
