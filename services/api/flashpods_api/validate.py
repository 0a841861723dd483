"""Checks on everything that comes from the network, before it touches Podman, disk or SQL.

Each refusal is an ApiError (400) whose sentence says what to change.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import artifacts, ids, job_disk, kinds
from .config import CREDENTIAL_NAMES, Config
from .errors import bad_request
from .kinds import KINDS
from .store import STATUSES

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
# Names Flashpods sets or that would change how every program in the container behaves.
RESERVED_ENV = {"HOME", "TMPDIR", "PATH", "HOSTNAME", "USER", "LOGNAME", "SHELL", "container"}
RESERVED_PREFIXES = ("FLASHPODS_", "SPIFFE_", "LD_")
MAX_ENV = 100
MAX_ENV_VALUE = 32 * 1024
MAX_COMMAND = 64 * 1024
MAX_PROMPT = 120 * 1024  # it travels as an environment variable (Linux caps one at 128 KiB)
MAX_GLOB = 1024
JOB_FIELDS = {
    "kind",
    "command",
    "prompt",
    "upload_id",
    "image",
    "env",
    "timeout_s",
    "resources",
    "artifacts_glob",
    "budget_tokens",
}
RESOURCE_BOUNDS = {"cpus": (0.01, 1024.0), "memory": (6, 4 * 1024 * 1024), "pids": (16, 1_000_000)}


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _text(value: Any, name: str, limit: int) -> str:
    if not isinstance(value, str) or not value.strip():
        raise bad_request(f"bad_{name}", f"'{name}' must be a non-empty string.")
    if "\0" in value:
        raise bad_request(f"bad_{name}", f"'{name}' must not contain NUL bytes.")
    if len(value.encode()) > limit:
        raise bad_request(
            f"bad_{name}", f"'{name}' is longer than {limit} bytes; shorten it or put it in a file."
        )
    return value


def job_request(body: Any, config: Config) -> dict[str, Any]:
    """Validate a POST /jobs body; returns the fields of the new job record."""
    if not isinstance(body, dict):
        raise bad_request(
            "bad_json", 'The request body must be a JSON object like {"kind": "worker", ...}.'
        )
    unknown = sorted(set(body) - JOB_FIELDS)
    if unknown:
        raise bad_request(
            "unknown_field",
            f"Unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(JOB_FIELDS))}.",
        )
    kind = body.get("kind")
    if kind not in KINDS:
        raise bad_request("bad_kind", kind_error(kind))
    record: dict[str, Any] = {"kind": kind, "command": None, "prompt": None}
    if kind == "worker":
        if "prompt" in body:
            raise bad_request("bad_prompt", "A worker job takes 'command', not 'prompt'.")
        record["command"] = _text(body.get("command"), "command", MAX_COMMAND)
    else:
        if "command" in body:
            raise bad_request("bad_command", "A sub_agent job takes 'prompt', not 'command'.")
        record["prompt"] = _text(body.get("prompt"), "prompt", MAX_PROMPT)

    upload_id = body.get("upload_id")
    if upload_id is not None and not ids.is_upload_id(upload_id):
        raise bad_request(
            "bad_upload_id",
            "'upload_id' must be an id returned by POST /uploads (up_ + 16 characters).",
        )
    record["upload_id"] = upload_id

    image = body.get("image", config.images[kind])
    if not isinstance(image, str) or image not in config.images["allowed"]:
        raise bad_request(
            "image_not_allowed",
            f"Image {image!r} is not allowed on this host; "
            f"use one of: {', '.join(config.images['allowed'])}.",
        )
    record["image"] = image
    record["env"] = env(body.get("env", {}))
    if kind == "sub_agent":
        steered = sorted(n for n in record["env"] if n.upper().startswith("ANTHROPIC_"))
        if steered:
            raise bad_request(
                "reserved_env",
                f"Environment variable {steered[0]} is set by the host for sub_agent jobs "
                "(its sub_agent.env), so the agent's key cannot be sent elsewhere; remove it.",
            )
    record["timeout_s"] = timeout(
        body.get("timeout_s", config.default_timeout_s), config.max_timeout_s
    )
    record["resources"] = resources(body.get("resources", {}), config)
    glob = body.get("artifacts_glob")
    if glob is not None:
        _text(glob, "artifacts_glob", MAX_GLOB)
    record["artifacts_glob"] = glob
    record["budget_tokens"] = budget_tokens(body.get("budget_tokens"), config)
    # Last: a valid request on a host below its disk reserve gets 507, not a queue slot.
    job_disk.DiskGuard(config).refuse_if_low()
    return record


MAX_BUDGET_TOKENS = 2**53  # what the proxy reads back exactly (job_budget.MAX_TOKENS)


def budget_tokens(value: Any, config: Config) -> int | None:
    """A job's own model budget (input + output tokens): lower than the host's, never higher."""
    if value is None:
        return None
    host = config.limits["job_budget_tokens"]
    if config.storage["budgets"] is None:
        raise bad_request(
            "budget_not_metered",
            "This host does not meter model calls per job (no storage.budgets: no credential "
            "proxy budget directory), so 'budget_tokens' cannot be enforced; leave it out.",
        )
    most = host if host is not None else MAX_BUDGET_TOKENS
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise bad_request(
            "bad_budget_tokens",
            f"'budget_tokens' must be a positive whole number of tokens (at most {most}), "
            f"not {json.dumps(value)[:40]}.",
        )
    if value > most:
        where = "this host's budget (limits.job_budget_tokens)" if host else "the largest budget"
        raise bad_request(
            "bad_budget_tokens",
            f"'budget_tokens' {value} is above {where} of {most} tokens; ask for {most} or "
            "fewer, or leave it out to get the host's default.",
        )
    return value


def env(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise bad_request("bad_env", "'env' must be a JSON object of NAME: \"value\" strings.")
    if len(value) > MAX_ENV:
        raise bad_request("bad_env", f"'env' has more than {MAX_ENV} variables; pass fewer.")
    for name, val in value.items():
        if not ENV_NAME.fullmatch(name):
            raise bad_request(
                "bad_env",
                f"Environment variable name {name!r} is not a name "
                "(letters, digits, _; not starting with a digit).",
            )
        if name in RESERVED_ENV or name.startswith(RESERVED_PREFIXES):
            raise bad_request(
                "reserved_env",
                f"Environment variable {name} is set by Flashpods and cannot be overridden; "
                "rename it.",
            )
        if name.upper() in CREDENTIAL_NAMES:
            raise bad_request(
                "reserved_env",
                f"Environment variable {name} is a credential; jobs get secrets from the "
                "host's token service only, never through 'env'. Remove it.",
            )
        if not isinstance(val, str) or "\0" in val or len(val.encode()) > MAX_ENV_VALUE:
            raise bad_request(
                "bad_env",
                f"The value of {name} must be a string without NUL bytes, "
                f"at most {MAX_ENV_VALUE} bytes.",
            )
    return dict(value)


def timeout(value: Any, maximum: float) -> float:
    if not _number(value) or value != value or value <= 0 or value > maximum:
        raise bad_request(
            "bad_timeout",
            f"'timeout_s' must be a number of seconds above 0 and at most {maximum:g} "
            "(this host's maximum).",
        )
    return float(value)


# A job may lower the host's own per-job limits, never raise them.
HOST_LIMIT = {"memory": "job_memory_mb", "pids": "job_pids"}


def resources(value: Any, config: Config | None = None) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise bad_request(
            "bad_resources",
            '\'resources\' must be an object like {"cpus": 1.5, "memory": 2048, "pids": 512}.',
        )
    out: dict[str, Any] = {}
    for key, val in value.items():
        if key not in RESOURCE_BOUNDS:
            raise bad_request(
                "bad_resources", f"Unknown resource {key!r}; use cpus, memory (MiB) or pids."
            )
        low, high = RESOURCE_BOUNDS[key]
        integral = key != "cpus"
        if (
            not _number(val)
            or val != val
            or not low <= val <= high  # before float(): a huge int would overflow it
            or (integral and not float(val).is_integer())
        ):
            unit = (
                "a whole number of MiB"
                if key == "memory"
                else "a whole number"
                if integral
                else "a decimal number"
            )
            raise bad_request(
                "bad_resources", f"resources.{key} must be {unit} from {low:g} to {high:g}."
            )
        out[key] = int(val) if integral else float(val)
        if config is not None and key in HOST_LIMIT and out[key] > config.limits[HOST_LIMIT[key]]:
            most = config.limits[HOST_LIMIT[key]]
            unit = " MiB" if key == "memory" else ""
            raise bad_request(
                "bad_resources",
                f"resources.{key} must be at most {most}{unit} on this host "
                f"(its limits.{HOST_LIMIT[key]}); ask for less or leave it out for that default.",
            )
    if "cpus" in out and out["cpus"] > (os.cpu_count() or 1):
        raise bad_request(
            "bad_resources", f"resources.cpus must not exceed this host's {os.cpu_count()} CPUs."
        )
    return out


def job_id(value: str) -> str:
    if not ids.is_job_id(value):
        raise bad_request(
            "bad_job_id", "Job ids look like job_ followed by 12 characters a-z and 2-7."
        )
    return value


def query_int(args: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = args.get(name)
    if raw is None:
        return default
    if not re.fullmatch(r"[0-9]{1,18}", raw) or not low <= int(raw) <= high:
        raise bad_request(
            f"bad_{name}", f"Query parameter '{name}' must be a whole number from {low} to {high}."
        )
    return int(raw)


def json_body(raw: bytes, optional: bool = False) -> Any:
    """The parsed JSON body; no body at all is {} when `optional` (JSON null is no object).

    A body of whitespace alone is not JSON (a JSON text holds a value) and is refused like
    any other bad body: the fuzzer counted a tab accepted as a schema violation."""
    if not raw:
        if optional:
            return {}
        raise bad_request("bad_json", "The request needs a JSON body.")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise bad_request(
            "bad_json", "The request body is not valid JSON; send a JSON object."
        ) from None


def upload_basis(body: Any) -> str | None:
    """The `basis` of a POST /uploads body (None: a full upload)."""
    if not isinstance(body, dict) or set(body) - {"basis"}:
        raise bad_request(
            "bad_json", 'The body must be empty or {"basis": "<previous upload_id>"}.'
        )
    basis = body.get("basis")
    if basis is not None and not ids.is_upload_id(basis):
        raise bad_request(
            "bad_basis",
            "'basis' must be an upload id (up_ + 16 characters) used by an earlier job.",
        )
    return basis or None


@dataclass(frozen=True)
class JobsQuery:
    """GET /jobs: filters, page size and where the page starts (a seq, exclusive)."""

    status: str | None
    kind: str | None
    limit: int
    before: int | None


def jobs_query(args: Mapping[str, str]) -> JobsQuery:
    status = args.get("status")
    if status is not None and status not in STATUSES:
        raise bad_request("bad_status", f"'status' must be one of {', '.join(STATUSES)}.")
    kind = args.get("kind")
    if kind is not None and kind not in KINDS:
        raise bad_request("bad_kind", kind_error(kind))
    limit = query_int(args, "limit", 50, 1, 500)
    cursor = args.get("cursor")
    before = None
    if cursor is not None:
        if not cursor.isascii() or not cursor.isdigit() or len(cursor) > 18:
            raise bad_request(
                "bad_cursor", "'cursor' must be the next_cursor value of a previous GET /jobs."
            )
        before = int(cursor)
    return JobsQuery(status, kind, limit, before)


@dataclass(frozen=True)
class LogsQuery:
    """GET /jobs/<id>/logs: where to read from, how much, and how to answer."""

    offset: int
    limit: int
    follow: bool
    raw: bool


def logs_query(args: Mapping[str, str], default_limit: int, max_limit: int) -> LogsQuery:
    offset = query_int(args, "offset", 0, 0, 2**62)
    limit = query_int(args, "limit", default_limit, 1, max_limit)
    follow = args.get("follow", "0")
    if follow not in ("0", "1"):
        raise bad_request("bad_follow", "'follow' must be 0 or 1.")
    fmt = args.get("format", "json")
    if fmt not in ("json", "raw"):
        raise bad_request("bad_format", "'format' must be json (the default) or raw.")
    return LogsQuery(offset, limit, follow == "1", fmt == "raw")


def artifact_path(path: str) -> str:
    if not artifacts.valid_relpath(path):
        raise bad_request(
            "bad_path",
            "Artifact paths are relative, without '.', '..', empty parts or NUL bytes.",
        )
    return path


def kind_error(kind: Any) -> str:
    """What to write instead of a wrong job kind (an old sub-agent spelling named)."""
    if kinds.is_old_sub_agent_name(kind):
        return kinds.renamed(kind, "'kind'")
    return '\'kind\' must be "worker" or "sub_agent".'
