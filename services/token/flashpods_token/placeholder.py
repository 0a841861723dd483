"""Placeholders: what a job holds instead of a secret that the proxy injects.

`fpph.<NAME>.<job_id>`. Not secret: the proxy takes the caller's job from the
connection, so a placeholder only says which secret goes where (docs/design.md,
"Credential proxy").
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PREFIX = "fpph."
# The job id part stops at '.', so an id with a '.' parses as another (unknown) job and
# is refused: fail closed. API job ids are job_[a-z2-7]{12}.
PATTERN = re.compile(r"fpph\.([A-Z_][A-Z0-9_]{0,63})\.([A-Za-z0-9][A-Za-z0-9_-]{0,127})")


@dataclass(frozen=True)
class Found:
    name: str
    job_id: str
    text: str


def placeholder(name: str, job_id: str) -> str:
    return f"{PREFIX}{name}.{job_id}"


def find(text: str) -> list[Found]:
    return [Found(m.group(1), m.group(2), m.group(0)) for m in PATTERN.finditer(text)]
