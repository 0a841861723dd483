"""Names shared by the proxy tests and their fixtures."""

from __future__ import annotations

import secrets
from pathlib import Path

BUILD_HELPER = Path(__file__).resolve().parents[3] / "scripts" / "lib" / "build-helper.sh"
AGENT_IMAGE = "localhost/flashpods-agent:latest"
FIREWALL_VALUES = {"wg_if": "fpa-nowg", "laptop_addr": "10.0.0.2", "resolvers": []}
GITHUB_HOSTS = ["github.com", "api.github.com"]
MODEL_HOST = "api.anthropic.com"
OTHER_HOST = "other.example"


def unique_keys() -> dict[str, str]:
    # Secret parts long and random, so no 8-character piece occurs by chance.
    return {
        "GITHUB_TOKEN": "ghp_" + secrets.token_hex(18),
        "ANTHROPIC_API_KEY": "sk-ant-api03-" + secrets.token_hex(24),
    }
