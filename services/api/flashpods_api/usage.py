"""Per-job model usage as the credential proxy records it (docs/token.md, "Usage and
budget"): `<storage.usage>/<job_id>.json`, written by the proxy, read here for
`GET /jobs/<id>` and the job list. Checked field by field: a file that is missing,
too large or not of this shape reads as no usage."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .ids import is_job_id

MAX_FILE = 4096
COUNTS = (
    "requests",
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
)


def read_usage(usage_dir: str, job_id: str) -> dict[str, Any] | None:
    if not is_job_id(job_id):
        return None
    try:
        fd = os.open(Path(usage_dir) / f"{job_id}.json", os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as fh:
        raw = fh.read(MAX_FILE + 1)
    if len(raw) > MAX_FILE:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    out: dict[str, Any] = {key: _count(data.get(key)) or 0 for key in COUNTS}
    out["budget_tokens"] = _count(data.get("budget_tokens"))
    out["budget_exhausted"] = data.get("budget_exhausted") is True
    return out


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None
