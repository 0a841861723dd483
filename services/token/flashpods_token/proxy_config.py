"""The `proxy` block and `env_delivery` list of the token config (docs/design.md).

Every secret needs a host rule (the proxy injects it, the job holds a placeholder) or
an explicit `env_delivery` entry (the old, weaker way: the value enters the job's
environment). A secret with neither is refused at load.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from .egress import EgressRefused, check_hostname
from .github_scope import GithubScope, ScopeError, parse_scope


class ProxyConfigError(Exception):
    pass


@dataclass(frozen=True)
class ProxySettings:
    socket: str
    ca_dir: str | None  # the proxy makes its CA here; or a CA made elsewhere:
    firewall_template: str
    rules: dict[str, list[str]] = field(default_factory=dict)  # secret -> its hosts
    upstream_ca_file: str | None = None
    static_hosts: dict[str, str] = field(default_factory=dict)
    # Interfaces no upstream connection may leave by: the laptop's WireGuard tunnel (the
    # firewall's `oifname "wg0" goto job_refuse`; it routes public-looking addresses).
    refused_interfaces: list[str] = field(default_factory=list)
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 10.0
    idle_timeout_s: float = 300.0
    max_connections: int = 512
    max_connections_per_job: int = 64  # per PID namespace, like the token service
    # Model usage and budget (usage.py): requests to this secret's hosts are metered.
    model_secret: str = "ANTHROPIC_API_KEY"
    usage_dir: str | None = None
    budget_tokens: int | None = None  # input + output tokens per job; None: no cap
    # A CA made elsewhere, only read (NixOS: systemd credentials); instead of ca_dir.
    ca_key_file: str | None = None
    ca_cert_file: str | None = None
    # Per-job budgets, written by the API (job_budget.py); the lower of the two applies.
    budget_dir: str | None = None
    github_scope: GithubScope | None = None  # optional limits on the GitHub secret


_KEYS = set(ProxySettings.__dataclass_fields__)
_REQUIRED = ("socket", "firewall_template")
_CA_FILES = ("ca_key_file", "ca_cert_file")


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
        ca_files = [key for key in _CA_FILES if data.get(key) is not None]
        if data.get("ca_dir") is None and not ca_files:
            raise ProxyConfigError(
                "token config proxy: missing key 'ca_dir' (where the proxy makes its CA), "
                "or give ca_key_file and ca_cert_file (a CA made elsewhere)"
            )
        if ca_files and len(ca_files) != len(_CA_FILES):
            raise ProxyConfigError("token config proxy: give both ca_key_file and ca_cert_file")
        if ca_files and data.get("ca_dir") is not None:
            raise ProxyConfigError(
                "token config proxy: give ca_dir or ca_key_file and ca_cert_file, not both"
            )
        for key in _REQUIRED:
            if key not in data:
                raise ProxyConfigError(f"token config proxy: missing key {key!r}")
        for key in ("socket", "firewall_template", "ca_dir", *_CA_FILES):
            value = data.get(key)
            if (key in _REQUIRED or value is not None) and not (
                isinstance(value, str) and os.path.isabs(value)
            ):
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
        budget_dir = data.get("budget_dir")
        if budget_dir is not None and not (
            isinstance(budget_dir, str) and os.path.isabs(budget_dir)
        ):
            raise ProxyConfigError("token config proxy.budget_dir must be an absolute path")
        if budget_dir is not None and usage_dir is None:
            raise ProxyConfigError(
                "token config proxy.budget_dir needs proxy.usage_dir (where usage is kept)"
            )
        static = data.get("static_hosts") or {}
        if not isinstance(static, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in static.items()
        ):
            raise ProxyConfigError("token config proxy.static_hosts must map names to addresses")
        refused_ifs = data.get("refused_interfaces") or []
        if not isinstance(refused_ifs, list) or not all(
            isinstance(i, str) and 0 < len(i) < 16 and "/" not in i for i in refused_ifs
        ):
            raise ProxyConfigError(
                'token config proxy.refused_interfaces must list interface names (e.g. ["wg0"])'
            )
        try:
            scope = parse_scope(data.get("github_scope"), rules)
        except ScopeError as exc:
            raise ProxyConfigError(str(exc)) from None
        try:
            fields: dict[str, Any] = {"ca_dir": None, **data}
            proxy = ProxySettings(
                **(
                    fields
                    | {
                        "rules": rules,
                        "static_hosts": static,
                        "refused_interfaces": refused_ifs,
                        "github_scope": scope,
                    }
                )
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
