"""The API and reaper configuration: one JSON file (docs/design.md, "Configuration files").

Unknown keys are an error that names the key, so a typo never silently falls back to a
default. Secrets are never in this file, only paths to them.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from . import kinds

CONFIG_ENV = "FLASHPODS_API_CONFIG"

# The defaults live in one packaged file that the dev host overlays and the NixOS module
# reads with lib.importJSON (modules/flashpods/lib.nix), so the three cannot drift;
# tests/unit/nix/test_settings_platforms.py lists the keys each platform may change.
DEFAULTS_FILE = "defaults.json"
DEFAULTS_PATH = resources.files(__package__).joinpath(DEFAULTS_FILE)
DEFAULTS: dict[str, Any] = json.loads(DEFAULTS_PATH.read_text(encoding="utf-8"))

WARM_POOL_MAX = 32

# Sections whose inner keys are fixed (checked one level down); "sub_agent.env" is free-form.
_NESTED = ("storage", "images", "sub_agent", "spire", "retention", "limits", "reaper")
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
        _refuse_old_sub_agent_name(key, key)
        if key not in DEFAULTS:
            raise ConfigError(
                f"Unknown key {key!r} in the API configuration; remove it or fix its spelling."
            )
        if key in _NESTED:
            if not isinstance(value, dict):
                raise ConfigError(f"Configuration key {key!r} must be a JSON object.")
            for inner, inner_value in value.items():
                _refuse_old_sub_agent_name(inner, f"{key}.{inner}")
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
    def positive(
        path: str, value: Any, kind: type[int | float] | tuple[type[int | float], ...] = int
    ) -> None:
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
        if key == "job_budget_tokens" and value is None:
            continue  # no host-wide model budget (the credential proxy's budget_tokens)
        positive(f"limits.{key}", value)
    storage = cfg["storage"]
    for key in ("usage", "budgets"):
        if storage[key] is not None and not (
            isinstance(storage[key], str) and os.path.isabs(storage[key])
        ):
            raise ConfigError(f"storage.{key} must be an absolute path or null.")
    if storage["budgets"] is not None and storage["usage"] is None:
        raise ConfigError(
            "storage.budgets needs storage.usage: the reaper stops a job at its budget by "
            "reading the usage the credential proxy records there (its proxy.usage_dir)."
        )
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
    for kind in kinds.KINDS:
        if images[kind] not in images["allowed"]:
            raise ConfigError(
                f"images.{kind} ({images[kind]!r}) must also be listed in images.allowed."
            )
    command = cfg["sub_agent"]["command"]
    if not isinstance(command, list) or not command or not all(isinstance(c, str) for c in command):
        raise ConfigError("sub_agent.command must be a non-empty list of strings (argv).")
    _check_agent_env(cfg["sub_agent"]["env"])
    _check_warm_pool(cfg["warm_pool"])
    if not isinstance(cfg["instance"], str) or not cfg["instance"]:
        raise ConfigError("instance must be a non-empty string (it labels this host's containers).")
    _check_control(cfg["storage"])


def _refuse_old_sub_agent_name(name: str, where: str) -> None:
    if kinds.is_old_sub_agent_name(name):
        section, dot, _ = where.rpartition(".")
        raise ConfigError(
            f"Configuration key {where} uses an old name of the sub-agent; "
            f"write {section}{dot}{kinds.SUB_AGENT} instead."
        )


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
        raise ConfigError("sub_agent.env must be a JSON object of NAME: value strings.")
    for name, value in env.items():
        if not isinstance(value, str):
            raise ConfigError(
                f"sub_agent.env.{name} must be a string, not {type(value).__name__}; quote it."
            )
        if is_credential_name(name):
            raise ConfigError(
                f"sub_agent.env.{name} looks like a credential; secrets never go in the API "
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
        _refuse_old_sub_agent_name(kind, f"warm_pool.{kind}")
        if kind not in kinds.KINDS:
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
