"""The JSON configs the services read (docs/design.md, "Configuration files")."""

from __future__ import annotations

import copy
from typing import Any

# The dev host runs from the venv that holds the API too (scripts/lib/venv.sh).
from flashpods_api import config as api_settings
from flashpods_api import kinds

from .layout import Paths

# The API's packaged defaults (flashpods_api/defaults.json), the same file the API
# loads and the NixOS module renders: the dev host changes only where things live
# under its root and how it is reached (platform_config; the keys are listed in
# tests/unit/nix/test_settings_platforms.py). network_mode stays slirp4netns, the
# default: Debian 12's Podman 4.3 has no working pasta.
API_DEFAULTS: dict[str, Any] = api_settings.DEFAULTS
DEFAULTS_PATH = api_settings.DEFAULTS_PATH
TRUST_DOMAIN = API_DEFAULTS["spire"]["trust_domain"]


def deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Overrides win; nested dicts merge key by key so a test can change one limit only.

    `warm_pool` is replaced whole: {} must be able to empty a pool the base fills.
    """
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if key == "warm_pool":
            merged[key] = copy.deepcopy(value)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def platform_config(*, paths: Paths, instance: str, rsync_url: str) -> dict[str, Any]:
    """The packaged defaults with the dev host's own paths and URLs, nothing else changed."""
    return deep_merge(
        API_DEFAULTS,
        {
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
            "token_socket": str(paths.token_socket),
        },
    )


def api_config(
    *,
    paths: Paths,
    instance: str,
    rsync_url: str,
    max_concurrent_jobs: int,
    queue_limit: int,
    retention: dict[str, int],
    overrides: dict[str, Any],
    warm_pool: dict[str, int] | None = None,
) -> dict[str, Any]:
    base = platform_config(paths=paths, instance=instance, rsync_url=rsync_url)
    base["max_concurrent_jobs"] = max_concurrent_jobs
    base["queue_limit"] = queue_limit
    base["retention"].update(retention)
    if warm_pool is not None:
        base["warm_pool"] = dict(warm_pool)
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
    # Refused here too, before the token service would refuse its file at start.
    old = [role for role in roles if kinds.is_old_sub_agent_name(role)]
    if old:
        raise ValueError(
            f"roles.{old[0]} is an old name of the sub-agent role: write roles.sub_agent"
        )
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
            "budget_dir": str(paths.budgets),
        } | proxy
    ruled = set((config.get("proxy") or {}).get("rules") or {})
    if "env_delivery" not in config:
        config["env_delivery"] = sorted(set(config["secrets"]) - ruled)
    return config
