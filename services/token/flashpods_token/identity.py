"""SPIFFE IDs of job containers, shared by both attestation modes.

spiffe://<trust_domain>/job/<job_id>/worker      for kind "worker"
spiffe://<trust_domain>/job/<job_id>/sub_agent   for kind "sub_agent"

The role is the kind, spelled the same everywhere (issue 17). Old spellings of the
sub-agent (`agent`, `subagent`, `sub-agent`, ...) are refused with a sentence that
names `sub_agent`, in SPIFFE IDs as in the token service's roles.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Job ids are the API's; keep to a conservative alphabet so an id can never
# smuggle path separators, spaces or control characters into logs or IDs.
JOB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
TOKEN_NAME_RE = re.compile(r"^[A-Z_][A-Z0-9_]{0,63}$")
ROLES = ("worker", "sub_agent")


class IdentityError(Exception):
    """A SPIFFE ID or container label does not describe a job identity."""


@dataclass(frozen=True)
class JobIdentity:
    spiffe_id: str
    job_id: str
    role: str  # "worker" or "sub_agent", the job's kind


def identity_for_kind(trust_domain: str, job_id: str, kind: str) -> JobIdentity:
    if not JOB_ID_RE.match(job_id or ""):
        raise IdentityError("job id label is not a valid job id")
    if kind not in ROLES:
        raise IdentityError("kind label must be worker or sub_agent")
    return JobIdentity(f"spiffe://{trust_domain}/job/{job_id}/{kind}", job_id, kind)


def is_old_sub_agent_name(name: object) -> bool:
    """`agent`, `subagent`, `sub-agent`, `subAgent`, ...: any spelling but `sub_agent`."""
    if not isinstance(name, str) or name == "sub_agent":
        return False
    folded = name.lower().replace("-", "").replace("_", "").replace(" ", "")
    return folded in ("agent", "subagent", "subagents", "agents")


def parse_spiffe_id(trust_domain: str, value: object) -> JobIdentity:
    """Parse a `sub` claim; raise IdentityError naming what is wrong."""
    if not isinstance(value, str):
        raise IdentityError("sub is missing or not a string")
    prefix = "spiffe://"
    if not value.startswith(prefix):
        raise IdentityError("sub is not a SPIFFE ID")
    rest = value[len(prefix) :]
    domain, _, path = rest.partition("/")
    if domain != trust_domain:
        raise IdentityError("sub is in a foreign trust domain")
    parts = path.split("/")
    if len(parts) == 3 and parts[0] == "job" and is_old_sub_agent_name(parts[2]):
        raise IdentityError(
            f"sub path ends in /{parts[2]}, an old name of the sub-agent role: "
            "its registration entry must use /job/<job_id>/sub_agent"
        )
    if len(parts) != 3 or parts[0] != "job" or parts[2] not in ROLES:
        raise IdentityError("sub path is not /job/<job_id>/<worker|sub_agent>")
    if not JOB_ID_RE.match(parts[1]):
        raise IdentityError("sub path has an invalid job id")
    return JobIdentity(value, parts[1], parts[2])
