"""The dev host's optional settings file: `flashpods-devhost run --config flashpods.toml`.

TOML (Python's tomllib) or JSON, chosen by the file's suffix (.json is JSON, anything
else TOML). Every key is optional; KEYS below is the whole list, and docs/devhost.md
documents each one. A key the file does not know is an error that names it, so a typo
never silently falls back to a default. An old spelling of the sub-agent (`agent`,
`subagent`, `sub-agent`, ...) is refused naming `sub_agent`.

Where a key also exists as a command-line flag it has the flag's name with `_` for `-`
(`api_port` for `--api-port`), and the flag wins over the file, the file over the
environment (FLASHPODS_DEV_*), the environment over the built-in default. A new flag
becomes a file key by one row in KEYS with `flag=True`.

Secrets never go in this file: `[secrets]` names files that hold them.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flashpods_api import kinds

# The API's sections whose keys the file passes through under the API's own names.
API_LIMITS = (
    "log_bytes",
    "artifact_bytes",
    "upload_bytes",
    "job_memory_mb",
    "job_pids",
    "job_disk_bytes",
    "job_inodes",
    "disk_reserve_bytes",
)


class SettingsFileError(ValueError):
    """The settings file cannot be used; the message names the file and what to change."""


@dataclass(frozen=True)
class Key:
    name: str  # dotted: "api_port", "sub_agent.model", "limits.log_bytes"
    types: tuple[type, ...]
    doc: str
    flag: bool = False  # also a command-line flag (--name with - for _)


def _keys() -> tuple[Key, ...]:
    text, integer, boolean = (str,), (int,), (bool,)
    seconds = (int, float)
    rows = [
        Key("root", text, "state directory of the host", flag=True),
        Key("instance", text, "label of this host's containers", flag=True),
        Key("api_host", text, "address the API binds", flag=True),
        Key("api_port", integer, "port of the API", flag=True),
        Key("rsync_host", text, "address rsyncd binds", flag=True),
        Key("rsync_port", integer, "port of rsyncd", flag=True),
        Key("max_concurrent_jobs", integer, "jobs running at once", flag=True),
        Key("firewall", boolean, "load the nftables table (root)", flag=True),
        Key("laptop_if", text, "interface the laptop's traffic arrives on", flag=True),
        Key("laptop_addr", text, "the laptop's address", flag=True),
        Key("env_file", text, "where the client settings are written", flag=True),
        Key("attestation", text, "peer, or spire: real SPIRE (docs/spire.md)", flag=True),
        Key("api_workers", integer, "gunicorn worker processes"),
        Key("queue_limit", integer, "queued jobs accepted before 429"),
        Key("default_timeout_s", seconds, "timeout of a job that asks for none"),
        Key("max_timeout_s", seconds, "largest timeout a job may ask for"),
        Key("kill_grace_s", seconds, "SIGTERM to SIGKILL"),
        Key("helper_path", text, "the static flashpods-init on this machine"),
        Key("warm_pool.worker", integer, "warm worker containers"),
        Key("warm_pool.sub_agent", integer, "warm sub-agent containers"),
        Key("sub_agent.model", text, "model of sub-agents (ANTHROPIC_MODEL)"),
        Key("sub_agent.base_url", text, "Messages API endpoint (ANTHROPIC_BASE_URL)"),
        Key("sub_agent.command", (list,), "argv of sub-agent jobs"),
        Key("sub_agent.env", (dict,), "environment of every sub-agent job"),
        Key("images.worker", text, "image of worker jobs"),
        Key("images.sub_agent", text, "image of sub-agent jobs"),
        Key("images.allowed", (list,), "images a job may name"),
        Key("retention.artifacts_s", seconds, "artifacts kept after a job"),
        Key("retention.logs_s", seconds, "logs kept after a job"),
        Key("retention.uploads_s", seconds, "unused uploads kept"),
        *(Key(f"limits.{name}", integer, "the API's limits.{name}") for name in API_LIMITS),
        Key("secrets", (dict,), "NAME = file holding the secret"),
        Key("roles.worker", (list,), "secret names worker jobs receive"),
        Key("roles.sub_agent", (list,), "secret names sub-agent jobs receive"),
        Key("proxy.github_scope", (dict,), "GitHub scoping at the proxy (docs/token.md)"),
    ]
    return tuple(rows)


KEYS = _keys()
BY_NAME = {key.name: key for key in KEYS}
FLAGS = tuple(key.name for key in KEYS if key.flag)
# Sections whose inner keys are listed one by one in KEYS; other dict values are leaves.
SECTIONS = {key.name.split(".", 1)[0] for key in KEYS if "." in key.name}


def read(path: Path) -> dict[str, Any]:
    """The file's keys, flattened to KEYS' dotted names and checked."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SettingsFileError(f"cannot read the settings file {path}: {exc.strerror}") from None
    try:
        is_json = path.suffix == ".json"
        data = json.loads(raw) if is_json else tomllib.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        kind = "JSON" if path.suffix == ".json" else "TOML"
        raise SettingsFileError(f"the settings file {path} is not valid {kind}: {exc}") from None
    if not isinstance(data, dict):
        raise SettingsFileError(f"the settings file {path} must hold a table (JSON object)")
    return check(data, str(path))


def check(data: dict[str, Any], where: str) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    unknown: list[str] = []
    for name, value in data.items():
        if name in SECTIONS and not isinstance(value, dict):
            inner = next(k.name for k in KEYS if k.name.startswith(f"{name}."))
            raise SettingsFileError(
                f"{where}: {name} must be a table of keys like {inner} ([{name}] in TOML)"
            )
        if name in SECTIONS:
            for inner, inner_value in value.items():
                flat[f"{name}.{inner}"] = inner_value
        else:
            flat[name] = value
    for name in flat:
        for part in name.split("."):
            if kinds.is_old_sub_agent_name(part):
                good = ".".join(kinds.SUB_AGENT if p == part else p for p in name.split("."))
                raise SettingsFileError(
                    f"{where}: {name} uses an old name of the sub-agent; write {good} instead"
                )
        if name not in BY_NAME:
            unknown.append(name)
    if unknown:
        raise SettingsFileError(
            f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(sorted(unknown))}; "
            'README.md, "Dev host settings file", lists every key'
        )
    for name, value in flat.items():
        types = BY_NAME[name].types
        # bool is an int in Python: a port of `true` is a mistake, not 1.
        wrong_bool = isinstance(value, bool) and bool not in types
        if wrong_bool or not isinstance(value, types):
            wanted = " or ".join(_TYPE_NAMES[t] for t in types)
            raise SettingsFileError(f"{where}: {name} must be {wanted}, not {value!r}")
    return flat


_TYPE_NAMES = {
    str: "a string",
    int: "a whole number",
    float: "a number",
    bool: "true or false",
    list: "a list",
    dict: "a table",
}


def api_overrides(flat: dict[str, Any]) -> dict[str, Any]:
    """The file's keys that go into the API's configuration, under the API's names."""
    out: dict[str, Any] = {}
    for name in ("default_timeout_s", "max_timeout_s", "kill_grace_s", "helper_path"):
        if name in flat:
            out[name] = flat[name]
    for section in ("images", "limits"):
        inner = {k.split(".", 1)[1]: v for k, v in flat.items() if k.startswith(f"{section}.")}
        if inner:
            out[section] = inner
    sub_agent: dict[str, Any] = {}
    if "sub_agent.command" in flat:
        sub_agent["command"] = flat["sub_agent.command"]
    env = dict(flat.get("sub_agent.env", {}))
    if "sub_agent.model" in flat:
        env["ANTHROPIC_MODEL"] = flat["sub_agent.model"]
    if "sub_agent.base_url" in flat:
        env["ANTHROPIC_BASE_URL"] = flat["sub_agent.base_url"]
    if env:
        sub_agent["env"] = env
    if sub_agent:
        out["sub_agent"] = sub_agent
    return out


def section(flat: dict[str, Any], name: str) -> dict[str, Any] | None:
    """{"worker": 1} for section "warm_pool" from "warm_pool.worker" = 1; None when absent."""
    inner = {k.split(".", 1)[1]: v for k, v in flat.items() if k.startswith(f"{name}.")}
    return inner or None


def read_secrets(files: dict[str, Any], where: str) -> dict[str, str]:
    """[secrets] NAME = "/path": each file's content (one trailing newline dropped)."""
    values = {}
    for name, path in files.items():
        if not isinstance(path, str) or not Path(path).is_absolute():
            raise SettingsFileError(f"{where}: secrets.{name} must be an absolute file path")
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise SettingsFileError(
                f"{where}: secrets.{name}: cannot read {path}: {exc.strerror}"
            ) from None
        values[name] = text[:-1] if text.endswith("\n") else text
    return values
