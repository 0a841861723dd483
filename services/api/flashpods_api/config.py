"""The API and reaper configuration: one JSON file (docs/design.md, "Configuration files").

Unknown keys are an error that names the key, so a typo never silently falls back to a
default. Secrets are never in this file, only paths to them.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONFIG_ENV = "FLASHPODS_API_CONFIG"

DEFAULTS: dict[str, Any] = {
    "instance": "dev",
    "token_file": "/run/credentials/flashpods-api/api-token",
    "db_path": "/var/lib/flashpods/db/flashpods.db",
    "storage": {
        "uploads": "/tmp/flashpods/uploads",
        "workspaces": "/var/lib/flashpods/workspaces",
        "artifacts": "/var/lib/flashpods/artifacts",
        "logs": "/var/log/flashpods",
        "control": None,  # warm containers' hand-over dirs; None = control beside <workspaces>
        "usage": None,  # the credential proxy's per-job model usage (its proxy.usage_dir)
    },
    "podman_url": "unix:///run/flashpods/podman/podman.sock",
    "rsync_url": "rsync://10.0.0.1/uploads",
    "allowed_peers": [],
    "max_concurrent_jobs": 4,
    "queue_limit": 1000,
    "default_timeout_s": 3600,
    "max_timeout_s": 86400,
    "kill_grace_s": 10,
    "images": {
        "worker": "localhost/flashpods-worker:latest",
        "sub_agent": "localhost/flashpods-agent:latest",
        "allowed": ["localhost/flashpods-worker:latest", "localhost/flashpods-agent:latest"],
    },
    "agent": {"command": ["/flashpods/agent/entrypoint"], "env": {}},
    "network_mode": "slirp4netns",
    "helper_path": "/opt/flashpods/lib/flashpods-init",
    "token_socket": "/run/flashpods/token/token.sock",
    "attestation": "peer",
    "spire": {
        "server_cli": "spire-server",
        "server_socket": "/run/spire/server/private/api.sock",
        "trust_domain": "flashpods.internal",
        "parent_id": "spiffe://flashpods.internal/agent/host",
        "jwt_svid_ttl_s": 300,
        "agent_socket": "/run/spire/sockets/agent.sock",
        # A static spire-agent on the host, mounted read-only at /flashpods/bin/spire-agent
        # in spire mode (flashpods-init runs it as the Workload API client) for images
        # that do not carry one (the dev host's busybox image); null: the image has it
        # (the NixOS images do).
        "agent_cli": None,
    },
    "retention": {"artifacts_s": 3600, "logs_s": 86400, "uploads_s": 3600},
    "limits": {
        "log_bytes": 64 * 1024 * 1024,
        "artifact_bytes": 1024 * 1024 * 1024,
        "upload_bytes": 1024 * 1024 * 1024,
        # Every job's own limits (docs/security.md, "Per-job limits"); a job may ask for
        # less memory or pids (resources), never more.
        "job_memory_mb": 4096,
        "job_pids": 1024,
        "job_disk_bytes": 10 * 1024 * 1024 * 1024,  # /workspace and /artifacts together
        "job_inodes": 200_000,
        # Below this much free space on a state filesystem no new job is accepted; half
        # of it is held back as a ballast file beside the database (job_limits.DiskGuard).
        "disk_reserve_bytes": 1024 * 1024 * 1024,
    },
    "reaper": {"interval_s": 1.0},
    # Containers kept created and started ahead of demand, per kind ({} = no warm pool).
    "warm_pool": {},
}

WARM_POOL_MAX = 32

# Sections whose inner keys are fixed (checked one level down); "agent.env" is free-form.
_NESTED = ("storage", "images", "agent", "spire", "retention", "limits", "reaper")
# Rootless "bridge" is refused: jobs on a rootless bridge reach each other inside Podman's
# own rootless network namespace, where no host rule can see the traffic (measured;
# docs/security.md, V19). "host" would put jobs on the host's own network stack.
NETWORK_MODES = ("slirp4netns", "pasta")


class ConfigError(Exception):
    """The configuration file is missing, unreadable or has a wrong key or value."""


@dataclass(frozen=True)
class Config:
    raw: dict[str, Any]

    def __getattr__(self, name: str) -> Any:
        try:
            return self.raw[name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def uploads_dir(self) -> Path:
        return Path(self.raw["storage"]["uploads"])

    @property
    def bases_dir(self) -> Path:
        return self.uploads_dir / ".bases"

    @property
    def workspaces_dir(self) -> Path:
        return Path(self.raw["storage"]["workspaces"])

    @property
    def artifacts_dir(self) -> Path:
        return Path(self.raw["storage"]["artifacts"])

    @property
    def logs_dir(self) -> Path:
        return Path(self.raw["storage"]["logs"])

    @property
    def create_lock_path(self) -> Path:
        """Serializes container creation (runtime.Runtime._creating) across the API's
        workers and the reaper: beside the database, which both already write."""
        return Path(self.raw["db_path"]).parent / "podman-create.lock"

    @property
    def control_dir(self) -> Path:
        """Per-job hand-over dirs of warm containers (mounted read-only at /flashpods/control)."""
        # Never inside a directory the container uid can write (the shared storage
        # dirs are group flashpods 2770): there it could swap the control root for a
        # link and have the API write hand-over files where it chose (_check_control).
        configured = self.raw["storage"]["control"]
        return Path(configured) if configured else self.workspaces_dir.parent / "control"


def from_dict(data: dict[str, Any]) -> Config:
    """Merge `data` over the defaults, refusing unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise ConfigError("The API configuration must be a JSON object.")
    merged = copy.deepcopy(DEFAULTS)
    for key, value in data.items():
        if key not in DEFAULTS:
            raise ConfigError(
                f"Unknown key {key!r} in the API configuration; remove it or fix its spelling."
            )
        if key in _NESTED:
            if not isinstance(value, dict):
                raise ConfigError(f"Configuration key {key!r} must be a JSON object.")
            for inner, inner_value in value.items():
                if inner not in DEFAULTS[key]:
                    raise ConfigError(
                        f"Unknown key {key}.{inner!r} in the API configuration; "
                        "remove it or fix its spelling."
                    )
                merged[key][inner] = inner_value
        else:
            merged[key] = value
    _check(merged)
    return Config(merged)


def _check(cfg: dict[str, Any]) -> None:
    def positive(path: str, value: Any, kind: type | tuple[type, ...] = int) -> None:
        if isinstance(value, bool) or not isinstance(value, kind) or value <= 0:
            raise ConfigError(f"Configuration key {path} must be a positive number, not {value!r}.")

    positive("max_concurrent_jobs", cfg["max_concurrent_jobs"])
    positive("queue_limit", cfg["queue_limit"])
    positive("default_timeout_s", cfg["default_timeout_s"], (int, float))
    positive("max_timeout_s", cfg["max_timeout_s"], (int, float))
    positive("kill_grace_s", cfg["kill_grace_s"], (int, float))
    if cfg["default_timeout_s"] > cfg["max_timeout_s"]:
        raise ConfigError("default_timeout_s must not be larger than max_timeout_s.")
    for key, value in cfg["retention"].items():
        positive(f"retention.{key}", value, (int, float))
    for key, value in cfg["limits"].items():
        positive(f"limits.{key}", value)
    _check_job_limits(cfg["limits"])
    positive("reaper.interval_s", cfg["reaper"]["interval_s"], (int, float))
    if cfg["network_mode"] not in NETWORK_MODES:
        raise ConfigError(
            f"network_mode must be one of {', '.join(NETWORK_MODES)}, not {cfg['network_mode']!r}."
        )
    if cfg["attestation"] not in ("peer", "spire"):
        raise ConfigError(f"attestation must be 'peer' or 'spire', not {cfg['attestation']!r}.")
    if not isinstance(cfg["allowed_peers"], list) or not all(
        isinstance(p, str) for p in cfg["allowed_peers"]
    ):
        raise ConfigError(
            "allowed_peers must be a list of IP address strings ([] allows any peer)."
        )
    images = cfg["images"]
    for kind in ("worker", "sub_agent"):
        if images[kind] not in images["allowed"]:
            raise ConfigError(
                f"images.{kind} ({images[kind]!r}) must also be listed in images.allowed."
            )
    command = cfg["agent"]["command"]
    if not isinstance(command, list) or not command or not all(isinstance(c, str) for c in command):
        raise ConfigError("agent.command must be a non-empty list of strings (argv).")
    _check_agent_env(cfg["agent"]["env"])
    _check_warm_pool(cfg["warm_pool"])
    if not isinstance(cfg["instance"], str) or not cfg["instance"]:
        raise ConfigError("instance must be a non-empty string (it labels this host's containers).")
    _check_control(cfg["storage"])


def _check_control(storage: dict[str, Any]) -> None:
    """The warm pool's control root lies outside every directory jobs can write."""
    shared = [storage[k] for k in ("uploads", "workspaces", "artifacts", "logs")]
    control = storage["control"]
    where = Path(control) if control else Path(storage["workspaces"]).parent / "control"
    for directory in shared:
        if where == Path(directory) or Path(directory) in where.parents:
            raise ConfigError(
                f"storage.control ({where}) is inside {directory}, which the container uid "
                "can write: a job could swap the control directory for a link. Put it "
                "beside the storage directories instead (e.g. <state>/control, owned by the "
                "API user, group flashpods, mode 2750, in a directory jobs cannot write)."
            )


# Credentials never belong in a config file (secrets come from the token service only).
CREDENTIAL_NAMES = frozenset(
    {"ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "GITHUB_TOKEN", "GH_TOKEN"}
)
CREDENTIAL_SUFFIXES = ("_TOKEN", "_KEY", "_SECRET", "_PASSWORD", "_CREDENTIALS")


def is_credential_name(name: str) -> bool:
    """A name that looks like it carries a secret: known names and *_TOKEN/_KEY/_SECRET/..."""
    upper = name.upper()
    return upper in CREDENTIAL_NAMES or upper.endswith(CREDENTIAL_SUFFIXES)


def _check_agent_env(env: Any) -> None:
    if not isinstance(env, dict):
        raise ConfigError("agent.env must be a JSON object of NAME: value strings.")
    for name, value in env.items():
        if not isinstance(value, str):
            raise ConfigError(
                f"agent.env.{name} must be a string, not {type(value).__name__}; quote it."
            )
        if is_credential_name(name):
            raise ConfigError(
                f"agent.env.{name} looks like a credential; secrets never go in the API "
                "configuration: give it to the token service (its secrets and roles) instead."
            )


def _check_job_limits(limits: dict[str, Any]) -> None:
    from .validate import RESOURCE_BOUNDS  # one table of what a job may ask for

    for key, resource in (("job_memory_mb", "memory"), ("job_pids", "pids")):
        low, high = RESOURCE_BOUNDS[resource]
        if not low <= limits[key] <= high:
            raise ConfigError(f"limits.{key} must be from {low:g} to {high:g}, not {limits[key]}.")
    if limits["disk_reserve_bytes"] < 4 * 1024 * 1024:
        raise ConfigError(
            "limits.disk_reserve_bytes must be at least 4 MiB (4194304): the database needs "
            "room to record the end of a job that filled the disk."
        )


def _check_warm_pool(pool: Any) -> None:
    if not isinstance(pool, dict):
        raise ConfigError('warm_pool must be a JSON object like {"worker": 2, "sub_agent": 0}.')
    for kind, count in pool.items():
        if kind not in ("worker", "sub_agent"):
            raise ConfigError(f"warm_pool.{kind}: unknown kind; use worker or sub_agent.")
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= WARM_POOL_MAX:
            raise ConfigError(
                f"warm_pool.{kind} must be a whole number from 0 to {WARM_POOL_MAX}, not {count!r}."
            )


def load(path: str | os.PathLike[str] | None = None) -> Config:
    """Read the configuration from `path`, or from $FLASHPODS_API_CONFIG."""
    if path is None:
        path = os.environ.get(CONFIG_ENV)
    if not path:
        raise ConfigError(f"No configuration: pass --config PATH or set {CONFIG_ENV}.")
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"Cannot read the API configuration {path}: {exc.strerror}.") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"The API configuration {path} is not valid JSON: {exc}.") from exc
    return from_dict(data)
