"""The two job kinds, and the refusal of the sub-agent's old spellings.

The sub-agent is spelled `sub_agent` everywhere: job kind, token role, SPIFFE ID path
(`/job/<id>/sub_agent`), settings keys. Requests and settings that still use an old
name (`agent`, `subagent`, `sub-agent`, `subAgent`, ...) get an error that names the
new one instead of a generic "unknown".
"""

from __future__ import annotations

WORKER = "worker"
SUB_AGENT = "sub_agent"
KINDS = (WORKER, SUB_AGENT)


def is_old_sub_agent_name(name: object) -> bool:
    """`agent`, `subagent`, `sub-agent`, `Sub_Agent`, `subAgent`...: not `sub_agent` itself."""
    if not isinstance(name, str) or name == SUB_AGENT:
        return False
    folded = name.lower().replace("-", "").replace("_", "").replace(" ", "")
    return folded in ("agent", "subagent", "subagents", "agents")


def renamed(name: str, where: str) -> str:
    """The sentence for an old spelling found at `where` (a field or key)."""
    return f"{where} {name!r} is an old name of the sub-agent kind; write {SUB_AGENT!r} instead."
