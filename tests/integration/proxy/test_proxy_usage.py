"""Per-job model usage and the budget at the proxy: a sub-agent's Messages API calls
(plain and streamed) are metered, max_tokens is clamped to what is left of the job's
own budget (lower than the host's), at the cap the model endpoint answers
`budget_exhausted` without reaching upstream, and the reaper stops the job with
`budget_exhausted` in its record and summary. A job that tries to raise its own budget
(the budget directory, a forged link in place of its file, a huge max_tokens) cannot."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import pytest
from flashpods_mcp.models import JobInfo
from proxy_support import AGENT_IMAGE

pytestmark = [pytest.mark.root, pytest.mark.slow]

HERE = Path(__file__).parent
JOB_SCRIPT = (HERE / "model_job.sh").read_text()
ATTACK_SCRIPT = (HERE / "budget_attack_job.sh").read_text()
HOST_BUDGET = 1000
BUDGET = 100  # the stand-in reports 10 input + min(30, max_tokens) output per call


def agent_api(usage_dir: Path, **extra: object) -> dict:
    return {
        "storage": {"usage": str(usage_dir)},
        "images": {"sub_agent": AGENT_IMAGE},
        "sub_agent": {"command": ["sh", "-c", 'eval "$FLASHPODS_PROMPT"'], "env": {}},
    } | extra


def test_a_job_budget_clamps_refuses_and_the_reaper_stops_the_job(proxy_host, origin, usage_dir):
    api, keys = proxy_host(
        proxy={"usage_dir": str(usage_dir), "budget_tokens": HOST_BUDGET},
        # Time for the job's last call between TERM and KILL, on a loaded machine too.
        api=agent_api(usage_dir, kill_grace_s=20),
    )
    job = api.spawn(kind="sub_agent", prompt=JOB_SCRIPT, timeout_s=300, budget_tokens=BUDGET)
    assert job["budget_tokens"] == BUDGET
    final = api.wait(job["id"], timeout=300)
    text = api.logs(job["id"]).decode(errors="replace")
    lines = set(text.splitlines())

    # Every call that went upstream carried the real key and a max_tokens clamped to
    # the job's budget (the host's 1000 would clamp nothing): 64 asked each time;
    # 100 - 40 used = 60 left, then 100 - 80 = 20 left; then nothing left.
    calls = origin.seen("/v1/messages")
    assert [c["headers"]["x-api-key"] for c in calls] == [keys["ANTHROPIC_API_KEY"]] * 3, text
    assert [json.loads(c["body"])["max_tokens"] for c in calls] == [64, 60, 20]
    assert {"call1:200", "call2:200", "call3:200", "stream-events:1"} <= lines, text
    # The refusal, read by the job itself: on its fourth call, or on the one it makes
    # when the reaper asks it to stop (whichever came first).
    refused = [n for n in (4, 5) if f"call{n}:403" in lines]
    assert refused, text
    answer = next(line for line in lines if line.startswith(f"answer{refused[0]}:"))
    error = json.loads(answer.split(":", 1)[1])
    assert error["error"]["type"] == "budget_exhausted" and f"({BUDGET} tokens)" in answer

    # Stopped by the reaper for its budget: the record and the summary say so.
    assert (final["status"], final["stop_reason"]) == ("failed", "budget_exhausted"), final
    assert (
        final["error"].startswith("budget_exhausted: ") and f"of {BUDGET} input" in final["error"]
    )
    assert "budget_exhausted" in JobInfo.from_api(final).line()

    # The usage stays recorded, by the proxy and with the job.
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
    assert api.job(job["id"])["usage"] == usage
    assert any(j["id"] == job["id"] and j["usage"] == usage for j in api.jobs())


def test_a_job_cannot_raise_its_own_budget(proxy_host, origin, usage_dir):
    api, _ = proxy_host(
        proxy={"usage_dir": str(usage_dir), "budget_tokens": HOST_BUDGET},
        api=agent_api(usage_dir),
    )
    budgets = api.host.paths.budgets
    prompt = f"BUDGET_DIR={budgets}\n{ATTACK_SCRIPT}"
    job = api.spawn(kind="sub_agent", prompt=prompt, timeout_s=300, budget_tokens=50)
    job_id = job["id"]
    mine = budgets / f"{job_id}.json"
    workspace = Path(api.host.api_config["storage"]["workspaces"]) / job_id
    api.wait_for("the job running", lambda: api.job(job_id)["status"] == "running", 120)
    assert json.loads(mine.read_text()) == {"job_id": job_id, "budget_tokens": 50}

    # The job uid on the host (an escaped job) can neither write nor read the directory.
    for attempt in (f"echo x > {budgets}/{job_id}.json", f"cat {mine}", f"ls {budgets}"):
        as_job = subprocess.run(
            ["runuser", "-u", "flashpods", "--", "sh", "-c", attempt],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert as_job.returncode != 0 and "Permission denied" in as_job.stderr, attempt

    with tempfile.TemporaryDirectory(prefix="fp-forged-", dir="/var/tmp") as tmp:
        # A link in place of the job's file, to a file that would raise its budget: the
        # proxy never follows it, and never falls back to the host's (higher) default.
        os.chmod(tmp, 0o755)
        forged = Path(tmp) / "forged.json"
        forged.write_text(json.dumps({"job_id": job_id, "budget_tokens": 10**6}))
        os.chmod(forged, 0o644)
        aside = budgets / f".{job_id}.aside"
        os.rename(mine, aside)
        mine.symlink_to(forged)
        (workspace / "go1").touch()
        api.wait_for("call 1", lambda: b"answer1:" in api.logs(job_id), 120)
        mine.unlink()
        os.rename(aside, mine)
    (workspace / "go2").touch()
    final = api.wait(job_id, timeout=300)
    text = api.logs(job_id).decode(errors="replace")
    lines = set(text.splitlines())
    assert final["status"] == "succeeded", text[-3000:]
    assert {"budget-dir:absent", "budget-write:refused", "call1:503", "call2:200"} <= lines, text
    assert "budget_unreadable" in text and "Too many levels of symbolic links" in text
    # Only call 2 went upstream, its max_tokens of 1000000 clamped to the job's 50.
    calls = origin.seen("/v1/messages")
    assert [json.loads(c["body"])["max_tokens"] for c in calls] == [50]
    usage = json.loads((usage_dir / f"{job_id}.json").read_text())
    assert (usage["budget_tokens"], usage["requests"], usage["output_tokens"]) == (50, 1, 30)
    assert not mine.exists()  # the file went with the job
