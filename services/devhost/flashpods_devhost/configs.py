"""The JSON configs the services read (docs/design.md, "Configuration files")."""

from __future__ import annotations

import copy
from typing import Any

from .layout import Paths

WORKER_IMAGE = "localhost/flashpods-worker:latest"
AGENT_IMAGE = "localhost/flashpods-agent:latest"
HELPER_PATH = "/opt/flashpods/lib/flashpods-init"
TRUST_DOMAIN = "flashpods.internal"


def deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Overrides win; nested dicts merge key by key so a test can change one limit only."""
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def api_config(
    *,
    paths: Paths,
    instance: str,
    rsync_url: str,
    max_concurrent_jobs: int,
    queue_limit: int,
    retention: dict[str, int],
    overrides: dict[str, Any],
) -> dict[str, Any]:
    base = {
        "instance": instance,
        "token_file": str(paths.api_token),
        "db_path": str(paths.db),
        "storage": {
            "uploads": str(paths.uploads),
            "workspaces": str(paths.workspaces),
            "artifacts": str(paths.artifacts),
            "logs": str(paths.logs),
            "control": str(paths.control),
        },
        "podman_url": f"unix://{paths.podman_socket}",
        "rsync_url": rsync_url,
        "allowed_peers": [],
        "max_concurrent_jobs": max_concurrent_jobs,
        "queue_limit": queue_limit,
        "default_timeout_s": 3600,
        "max_timeout_s": 86400,
        "kill_grace_s": 10,
        "images": {
            "worker": WORKER_IMAGE,
            "sub_agent": AGENT_IMAGE,
            "allowed": [WORKER_IMAGE, AGENT_IMAGE],
        },
        "agent": {"command": ["/flashpods/agent/entrypoint"], "env": {}},
        "network_mode": "slirp4netns",
        "helper_path": HELPER_PATH,
        "token_socket": str(paths.token_socket),
        "attestation": "peer",
        "spire": {
            "server_cli": "spire-server",
            "server_socket": "/run/spire/server/api.sock",
            "trust_domain": TRUST_DOMAIN,
            "parent_id": f"spiffe://{TRUST_DOMAIN}/agent/host",
            "jwt_svid_ttl_s": 300,
            "agent_socket": "/run/spire/sockets/agent.sock",
        },
        "retention": {"artifacts_s": 3600, "logs_s": 86400, "uploads_s": 3600},
        "limits": {
            "log_bytes": 64 * 1024 * 1024,
            "artifact_bytes": 1024 * 1024 * 1024,
            "upload_bytes": 1024 * 1024 * 1024,
        },
        "reaper": {"interval_s": 1.0},
    }
    base["retention"].update(retention)
    return deep_merge(base, overrides)


def token_config(
    *,
    paths: Paths,
    instance: str,
    socket_group: str,
    roles: dict[str, list[str]],
    secret_files: dict[str, str],
    overrides: dict[str, Any],
) -> dict[str, Any]:
    missing = sorted({name for names in roles.values() for name in names} - set(secret_files))
    if missing:
        raise ValueError(
            f"roles grant {', '.join(missing)} but no such secret was given: add it to "
            "HostSettings.secrets or remove it from HostSettings.roles"
        )
    base = {
        "socket": str(paths.token_socket),
        "socket_group": socket_group,
        "mode": "peer",
        "trust_domain": TRUST_DOMAIN,
        "podman_url": f"unix://{paths.podman_socket}",
        "instance": instance,
        "roles": roles,
        "secrets": secret_files,
        "audit_log": str(paths.audit_log),
        "spire": {"bundle_file": None, "agent_socket": None, "audience": "flashpods-token"},
    }
    return proxy_defaults(deep_merge(base, overrides), paths)


def proxy_defaults(config: dict[str, Any], paths: Paths) -> dict[str, Any]:
    """Fill the credential proxy's paths when a `proxy` block is given, and opt every
    secret without a host rule into environment delivery (the dev host's default so
    far; the token service refuses a secret with neither, docs/token.md)."""
    proxy = config.get("proxy")
    if proxy is not None:
        from .render import FIREWALL_TEMPLATE, template_dir

        config["proxy"] = {
            "socket": str(paths.token_socket.parent / "proxy.sock"),
            "ca_dir": str(paths.token_state / "proxy-ca"),
            "firewall_template": str(template_dir() / FIREWALL_TEMPLATE),
            "usage_dir": str(paths.usage),
        } | proxy
    ruled = set((config.get("proxy") or {}).get("rules") or {})
    if "env_delivery" not in config:
        config["env_delivery"] = sorted(set(config["secrets"]) - ruled)
    return config
