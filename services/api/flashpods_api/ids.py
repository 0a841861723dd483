"""Job and upload ids: how they are made and the exact patterns every input must match."""

from __future__ import annotations

import re
import secrets

_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"  # lowercase base32
JOB_ID = re.compile(r"job_[a-z2-7]{12}")
UPLOAD_ID = re.compile(r"up_[a-z2-7]{16}")


def _random(n: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(n))


def new_job_id() -> str:
    return "job_" + _random(12)


def new_upload_id() -> str:
    return "up_" + _random(16)


def is_job_id(value: object) -> bool:
    return isinstance(value, str) and JOB_ID.fullmatch(value) is not None


def is_upload_id(value: object) -> bool:
    return isinstance(value, str) and UPLOAD_ID.fullmatch(value) is not None


class BadId(ValueError):
    """An id read back from the database or a directory does not match its pattern."""


def checked_job_id(value: object) -> str:
    """`value` if it is a job id, else BadId: ids are joined into host paths."""
    if not is_job_id(value):
        raise BadId(f"not a job id: {value!r}")
    return value  # type: ignore[return-value]


def checked_upload_id(value: object) -> str:
    if not is_upload_id(value):
        raise BadId(f"not an upload id: {value!r}")
    return value  # type: ignore[return-value]
