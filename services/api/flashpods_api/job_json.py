"""A job as the API shows it: the public fields of its row, times in ISO 8601 (docs/api.md)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import current_app, has_app_context

from .store import Store
from .usage import read_usage

TIMES = (
    "created_at",
    "claimed_at",
    "started_at",
    "finished_at",
    "artifacts_expire_at",
    "logs_expire_at",
)
PUBLIC = (
    "id", "kind", "status", "command", "prompt", "image", "env", "upload_id", "timeout_s",
    "resources", "artifacts_glob", "exit_code", "error", "log_bytes", "instance",
    "limits_not_applied", "workspace_changes", "budget_tokens", "stop_reason",
)  # fmt: skip


def iso(value: float | None) -> str | None:
    if value is None:
        return None
    return (
        datetime.fromtimestamp(value, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def public(store: Store, job: dict[str, Any] | None) -> dict[str, Any]:
    """The job's JSON; a queued job also gets its place in the queue (read from `store`)."""
    assert job is not None
    out = {key: job.get(key) for key in PUBLIC}
    for key in TIMES:
        out[key] = iso(job.get(key))
    out["log_capped"] = bool(job.get("log_capped"))
    out["stop_requested"] = job.get("stop_requested_at") is not None
    out["artifacts_available"] = not job.get("artifacts_deleted")
    out["logs_available"] = not job.get("logs_deleted")
    if job["status"] == "queued":
        out["queue_position"] = store.queue_position(job)
    usage_dir = current_app.config.get("FLASHPODS_USAGE_DIR") if has_app_context() else None
    if usage_dir:  # the credential proxy's metering (docs/token.md, "Usage and budget")
        out["usage"] = read_usage(usage_dir, job["id"])
    return out
