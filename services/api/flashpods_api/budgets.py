"""A job's own model budget: handed to the credential proxy, and enforced by the reaper.

The proxy learns a job's budget from `<storage.budgets>/<job_id>.json`, written here
before the job starts (cold or warm: a warm container exists before its job, so no
container label can carry it). The directory is the API user's, group of the token
user, mode 2750, and no container mounts it: the job can neither write nor read it
(docs/design.md, "Per-job budget"). The file is written beside under a temporary name
and renamed into place, so the proxy never reads half of it.

The reaper stops a running job whose recorded usage (usage.py) reached its budget:
the lower of the host's (`limits.job_budget_tokens`) and the job's own, or whatever the
proxy recorded as reached.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from . import ids
from .config import Config
from .usage import read_usage

STOP_REASON = "budget_exhausted"


def write_budget(config: Config, job: dict[str, Any]) -> None:
    """Write the job's budget file when it has a budget of its own (idempotent)."""
    directory = config.storage["budgets"]
    tokens = job.get("budget_tokens")
    if directory is None or tokens is None:
        return
    job_id = ids.checked_job_id(job["id"])
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        tmp = f".{job_id}.tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)
        fd = os.open(
            tmp,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o640,
            dir_fd=dir_fd,
        )
        with os.fdopen(fd, "w") as fh:
            os.fchmod(fh.fileno(), 0o640)  # whatever the umask; the group is the dir's (setgid)
            json.dump({"job_id": job_id, "budget_tokens": int(tokens)}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.rename(tmp, f"{job_id}.json", src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    finally:
        os.close(dir_fd)


def remove_budget(config: Config, job_id: str) -> None:
    """The job has ended: its file goes (the usage file keeps the budget it had)."""
    directory = config.storage["budgets"]
    if directory is None or not ids.is_job_id(job_id):
        return
    with contextlib.suppress(OSError):
        os.unlink(Path(directory) / f"{job_id}.json")


def effective(config: Config, job: dict[str, Any]) -> int | None:
    """The job's budget as the API knows it: the lower of the host's and its own."""
    budgets = [b for b in (config.limits["job_budget_tokens"], job.get("budget_tokens")) if b]
    return min(budgets) if budgets else None


def exhausted(config: Config, job: dict[str, Any]) -> bool:
    """True when the proxy's record says the job used its whole budget."""
    usage_dir = config.storage["usage"]
    if usage_dir is None:
        return False
    usage = read_usage(usage_dir, job["id"])
    if usage is None:
        return False
    if usage["budget_exhausted"]:
        return True
    budget = effective(config, job)
    used = usage["input_tokens"] + usage["output_tokens"]
    return budget is not None and used >= budget


def error_for(job: dict[str, Any], config: Config) -> str:
    budget = effective(config, job)
    host = config.limits["job_budget_tokens"]
    more = f" (up to this host's {host}, limits.job_budget_tokens)" if host is not None else ""
    of = f" of {budget} input + output tokens" if budget is not None else ""
    return (
        f"budget_exhausted: the job used its model token budget{of} and was stopped; its "
        "usage is kept with the job. Give the next job a larger budget_tokens"
        f"{more}, or split the work."
    )
