"""Load and check the token service's JSON configuration (FLASHPODS_TOKEN_CONFIG).

Unknown keys are an error that names the key, so a typo never silently turns a
setting off. Secrets are never in this file: only paths to files holding them.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .identity import ROLES, TOKEN_NAME_RE, is_old_sub_agent_name
from .proxy_attest import PROXY_AUDIENCE
from .proxy_config import ProxyConfigError, ProxySettings, parse_proxy

ENV_VAR = "FLASHPODS_TOKEN_CONFIG"
MODES = ("peer", "spire")
_TRUST_DOMAIN_RE = re.compile(r"^[a-z0-9._-]{1,255}$")


class ConfigError(Exception):
    """The configuration is unusable; the message says what to change."""


@dataclass(frozen=True)
class Limits:
    # Each read waits at most read_timeout_s, and the whole request must arrive within
    # twice that (a hard deadline: a byte now and then does not extend it).
    read_timeout_s: float = 5.0
    max_header_bytes: int = 8192
    max_body_bytes: int = 4096
    # Open connections in all, and per job (per PID namespace: jobs share one uid).
    max_connections: int = 256
    max_connections_per_job: int = 8
    # Failed exchanges written verbatim to the audit log per caller and window; the
    # rest of a window's failures become one line with their counts. Grants: all.
    audit_failures_per_window: int = 20
    audit_window_s: float = 60.0

    def check(self) -> None:
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ConfigError(f"token config limits.{name} must be a positive number")
        if self.max_connections_per_job > self.max_connections:
            raise ConfigError(
                "token config: limits.max_connections_per_job must not exceed "
                "limits.max_connections"
            )


@dataclass(frozen=True)
class RateLimit:
    per_s: float = 5.0
    burst: int = 20


@dataclass(frozen=True)
class SpireSettings:
    bundle_file: str | None = None
    agent_socket: str | None = None
    audience: str = "flashpods-token"
    leeway_s: int = 5


@dataclass(frozen=True)
class TokenConfig:
    socket: str
    socket_group: str | None
    mode: str
    trust_domain: str
    podman_url: str
    instance: str
    roles: dict[str, list[str]]
    secrets: dict[str, str]
    audit_log: str | None
    spire: SpireSettings = field(default_factory=SpireSettings)
    limits: Limits = field(default_factory=Limits)
    rate_limit: RateLimit = field(default_factory=RateLimit)
    # Credential proxy (docs/design.md): secrets it injects, and those opted into env.
    proxy: ProxySettings | None = None
    env_delivery: list[str] = field(default_factory=list)


_TOP_KEYS = {
    "socket",
    "socket_group",
    "mode",
    "trust_domain",
    "podman_url",
    "instance",
    "roles",
    "secrets",
    "audit_log",
    "spire",
    "limits",
    "rate_limit",
    "proxy",
    "env_delivery",
}
_REQUIRED = ("socket", "mode", "trust_domain", "podman_url", "instance", "roles", "secrets")


def _check_keys(where: str, data: dict, allowed: set[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {unknown[0]!r}; allowed keys are {', '.join(sorted(allowed))}"
        )


def _sub(where: str, data: object, cls: Any) -> Any:
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be an object")
    allowed = set(cls.__dataclass_fields__)
    _check_keys(where, data, allowed)
    try:
        return cls(**data)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def parse_config(data: object) -> TokenConfig:
    """Check a decoded JSON document and turn it into a TokenConfig."""
    if not isinstance(data, dict):
        raise ConfigError("the token service configuration must be a JSON object")
    _check_keys("token config", data, _TOP_KEYS)
    for key in _REQUIRED:
        if key not in data:
            raise ConfigError(f"token config: missing key {key!r}")
    mode = data["mode"]
    if mode not in MODES:
        raise ConfigError(f"token config: mode must be one of {', '.join(MODES)}, not {mode!r}")
    if not isinstance(data["trust_domain"], str) or not _TRUST_DOMAIN_RE.match(
        data["trust_domain"]
    ):
        raise ConfigError(
            "token config: trust_domain must be lower-case letters, digits, '.', '-', '_'"
        )
    if not str(data["podman_url"]).startswith("unix://"):
        raise ConfigError("token config: podman_url must be a unix:///path URL")

    roles = data["roles"]
    if not isinstance(roles, dict):
        raise ConfigError("token config: roles must be an object of role -> list of token names")
    for role in roles:
        if is_old_sub_agent_name(role):
            raise ConfigError(
                f"token config: roles.{role} is an old name of the sub-agent role; "
                "write roles.sub_agent instead"
            )
    _check_keys("token config roles", roles, set(ROLES))
    secrets = data["secrets"]
    if not isinstance(secrets, dict):
        raise ConfigError("token config: secrets must be an object of token name -> file path")
    for name, path in secrets.items():
        if not TOKEN_NAME_RE.match(name):
            raise ConfigError(
                f"token config: secret name {name!r} must match {TOKEN_NAME_RE.pattern}"
            )
        if not isinstance(path, str) or not os.path.isabs(path):
            raise ConfigError(f"token config: secrets.{name} must be an absolute file path")
    clean_roles: dict[str, list[str]] = {role: [] for role in ROLES}
    for role, names in roles.items():
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ConfigError(f"token config: roles.{role} must be a list of token names")
        for name in names:
            if name not in secrets:
                raise ConfigError(
                    f"token config: roles.{role} names {name!r}, which has no entry in secrets"
                )
        clean_roles[role] = list(dict.fromkeys(names))

    spire = _sub("token config spire", data.get("spire"), SpireSettings)
    if mode == "spire" and bool(spire.bundle_file) == bool(spire.agent_socket):
        raise ConfigError(
            "token config: spire mode needs exactly one of spire.bundle_file "
            "(from `spire-server bundle show -format spiffe`) or spire.agent_socket "
            "(the SPIRE agent's Workload API socket)"
        )
    if spire.audience == PROXY_AUDIENCE:
        raise ConfigError(
            f"token config: spire.audience must not be {PROXY_AUDIENCE!r}, the credential "
            "proxy's audience: an SVID for one service must never be accepted by the other; "
            "leave it at 'flashpods-token'"
        )
    limits = _sub("token config limits", data.get("limits"), Limits)
    limits.check()
    try:
        proxy, env_delivery = parse_proxy(data.get("proxy"), secrets, data.get("env_delivery"))
    except ProxyConfigError as exc:
        raise ConfigError(str(exc)) from None
    return TokenConfig(
        socket=data["socket"],
        socket_group=data.get("socket_group"),
        mode=mode,
        trust_domain=data["trust_domain"],
        podman_url=data["podman_url"],
        instance=str(data["instance"]),
        roles=clean_roles,
        secrets=dict(secrets),
        audit_log=data.get("audit_log"),
        spire=spire,
        limits=limits,
        rate_limit=_sub("token config rate_limit", data.get("rate_limit"), RateLimit),
        proxy=proxy,
        env_delivery=env_delivery,
    )


def load_config(path: str | None = None) -> TokenConfig:
    path = path or os.environ.get(ENV_VAR)
    if not path:
        raise ConfigError(f"set {ENV_VAR} to the token service's JSON configuration file")
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from None
    return parse_config(data)
