"""The `proxy` block and `env_delivery` list of the token config (docs/design.md).

Every secret needs a host rule (the proxy injects it, the job holds a placeholder) or
an explicit `env_delivery` entry (the old, weaker way: the value enters the job's
environment). A secret with neither is refused at load.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .egress import EgressRefused, check_hostname
from .github_scope import GithubScope, ScopeError, parse_scope


class ProxyConfigError(Exception):
    pass


@dataclass(frozen=True)
class ProxySettings:
    socket: str
    ca_dir: str
    firewall_template: str
    rules: dict[str, list[str]] = field(default_factory=dict)  # secret -> its hosts
    upstream_ca_file: str | None = None
    static_hosts: dict[str, str] = field(default_factory=dict)
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 10.0
    idle_timeout_s: float = 300.0
    max_connections: int = 512
    max_connections_per_job: int = 64  # per PID namespace, like the token service
    # Model usage and budget (usage.py): requests to this secret's hosts are metered.
    model_secret: str = "ANTHROPIC_API_KEY"
    usage_dir: str | None = None
    budget_tokens: int | None = None  # input + output tokens per job; None: no cap
    github_scope: GithubScope | None = None  # optional limits on the GitHub secret


_KEYS = set(ProxySettings.__dataclass_fields__)
_REQUIRED = ("socket", "ca_dir", "firewall_template")


def parse_proxy(
    data: object, secrets: dict[str, str], env_delivery: object
) -> tuple[ProxySettings | None, list[str]]:
    if env_delivery is None:
        env_delivery = []
    if not isinstance(env_delivery, list) or not all(isinstance(n, str) for n in env_delivery):
        raise ProxyConfigError("token config: env_delivery must be a list of secret names")
    for name in env_delivery:
        if name not in secrets:
            raise ProxyConfigError(
                f"token config: env_delivery names {name!r}, which has no entry in secrets"
            )
    proxy = None
    rules: dict[str, list[str]] = {}
    if data is not None:
        if not isinstance(data, dict):
            raise ProxyConfigError("token config: proxy must be an object")
        unknown = sorted(set(data) - _KEYS)
        if unknown:
            raise ProxyConfigError(
                f"token config proxy: unknown key {unknown[0]!r}; allowed keys are "
                f"{', '.join(sorted(_KEYS))}"
            )
        for key in _REQUIRED:
            if key not in data:
                raise ProxyConfigError(f"token config proxy: missing key {key!r}")
        for key in ("socket", "ca_dir", "firewall_template"):
            if not isinstance(data[key], str) or not os.path.isabs(data[key]):
                raise ProxyConfigError(f"token config proxy.{key} must be an absolute path")
        if os.path.basename(data["socket"]) != "proxy.sock":
            raise ProxyConfigError(
                "token config proxy.socket must be named proxy.sock, beside the token socket"
            )
        raw_rules = data.get("rules") or {}
        if not isinstance(raw_rules, dict):
            raise ProxyConfigError("token config proxy.rules must map secret names to hosts")
        for name, hosts in raw_rules.items():
            if name not in secrets:
                raise ProxyConfigError(
                    f"token config proxy.rules names {name!r}, which has no entry in secrets"
                )
            if not isinstance(hosts, list) or not hosts:
                raise ProxyConfigError(f"token config proxy.rules.{name} must list host names")
            try:
                rules[name] = [check_hostname(h) for h in hosts if isinstance(h, str)]
            except EgressRefused as exc:
                raise ProxyConfigError(f"token config proxy.rules.{name}: {exc}") from None
            if len(rules[name]) != len(hosts):
                raise ProxyConfigError(f"token config proxy.rules.{name} must list host names")
            if name in env_delivery:
                raise ProxyConfigError(
                    f"token config: {name} is in both proxy.rules and env_delivery; pick one"
                )
        budget = data.get("budget_tokens")
        if budget is not None and (
            isinstance(budget, bool) or not isinstance(budget, int) or budget < 1
        ):
            raise ProxyConfigError("token config proxy.budget_tokens must be a positive integer")
        usage_dir = data.get("usage_dir")
        if usage_dir is not None and not (isinstance(usage_dir, str) and os.path.isabs(usage_dir)):
            raise ProxyConfigError("token config proxy.usage_dir must be an absolute path")
        if budget is not None and usage_dir is None:
            raise ProxyConfigError(
                "token config proxy.budget_tokens needs proxy.usage_dir (where usage is kept)"
            )
        static = data.get("static_hosts") or {}
        if not isinstance(static, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in static.items()
        ):
            raise ProxyConfigError("token config proxy.static_hosts must map names to addresses")
        try:
            scope = parse_scope(data.get("github_scope"), rules)
        except ScopeError as exc:
            raise ProxyConfigError(str(exc)) from None
        try:
            proxy = ProxySettings(
                **(data | {"rules": rules, "static_hosts": static, "github_scope": scope})
            )
        except TypeError as exc:
            raise ProxyConfigError(f"token config proxy: {exc}") from None
    missing = sorted(n for n in secrets if n not in rules and n not in env_delivery)
    if missing:
        raise ProxyConfigError(
            f"token config: secret {missing[0]} has no host rule (proxy.rules) and is not "
            "opted into environment delivery (env_delivery): give it the hosts it is for, "
            "or list it in env_delivery to hand the real value to jobs (weaker: a job can "
            "send it anywhere)"
        )
    return proxy, list(env_delivery)
