"""Per-job model usage and the budget at the proxy: a sub-agent's Messages API calls
(plain and streamed) are metered, max_tokens is clamped to what is left, and at the cap
the model endpoint answers `budget_exhausted` without reaching upstream."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from proxy_support import AGENT_IMAGE

pytestmark = [pytest.mark.root, pytest.mark.slow]

JOB_SCRIPT = Path(__file__).with_name("model_job.sh").read_text()
BUDGET = 100  # the stand-in reports 10 input + min(30, max_tokens) output per call


def test_usage_is_recorded_and_the_budget_clamps_then_refuses(proxy_host, origin, usage_dir):
    api, keys = proxy_host(
        proxy={"usage_dir": str(usage_dir), "budget_tokens": BUDGET},
        api={
            "storage": {"usage": str(usage_dir)},
            "images": {"sub_agent": AGENT_IMAGE},
            "sub_agent": {"command": ["sh", "-c", 'eval "$FLASHPODS_PROMPT"'], "env": {}},
        },
    )
    job = api.spawn(kind="sub_agent", prompt=JOB_SCRIPT, timeout_s=300)
    final = api.wait(job["id"], timeout=300)
    text = api.logs(job["id"]).decode(errors="replace")
    assert final["status"] == "succeeded", text[-3000:]
    lines = set(text.splitlines())

    # Every call that went upstream carried the real key and a clamped max_tokens:
    # 64 asked each time; 100 - 40 used = 60 left, then 100 - 80 = 20 left.
    calls = origin.seen("/v1/messages")
    assert [c["headers"]["x-api-key"] for c in calls] == [keys["ANTHROPIC_API_KEY"]] * 3
    assert [json.loads(c["body"])["max_tokens"] for c in calls] == [64, 60, 20]
    assert {"call1:200", "call2:200", "call3:200", "call4:403"} <= lines, text
    assert "budget_exhausted" in text and "stream-events:1" in lines

    usage = json.loads((usage_dir / f"{job['id']}.json").read_text())
    assert usage == {
        "requests": 3,
        "input_tokens": 30,
        "output_tokens": 30 + 30 + 20,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "budget_tokens": BUDGET,
        "budget_exhausted": True,
    }
    # The API shows it with the job.
    assert api.job(job["id"])["usage"] == usage
    assert any(j["id"] == job["id"] and j["usage"] == usage for j in api.jobs())
