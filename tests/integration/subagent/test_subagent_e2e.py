"""Real Claude Code sub-agents in real rootless containers, started through the real API.

Each test starts a dev host in its own network namespace (conftest.py), scripts the
stand-in model endpoint for one conversation and checks what came back through the API:
artifacts, the workspace changes, the transcript in the logs, and what the endpoint saw.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest
from netlab import HOST_ADDR, MODEL_ADDR
from subagent_support import FINAL, result_text, tool_results, tool_uses, transcript

pytestmark = [pytest.mark.slow, pytest.mark.root]

# Claude Code's exit through our entrypoint (images/agent/entrypoint).
EXIT_AGENT_ERROR, EXIT_TOOL_ERRORS = 1, 2


def audit_entries(api, job_id: str) -> list[dict]:
    """The token service's audit lines about one job."""
    lines = Path(api.host.token_config["audit_log"]).read_text().splitlines()
    return [e for e in map(json.loads, lines) if e.get("job") == job_id]


def scripted_requests(model, script: str) -> list[dict]:
    return [r for r in model.model.message_requests() if r["script"] == script]


def test_subagent_reads_edits_and_writes_an_artifact(subagent_host, model):
    api = subagent_host()
    word = f"banana{secrets.token_hex(3)}"
    model.model.scripts["edit"] = [
        {
            "tool_uses": [
                {"name": "Read", "input": {"file_path": "/workspace/input.txt"}},
                {"name": "Read", "input": {"file_path": "/workspace/notes.md"}},
            ]
        },
        {
            "tool_uses": [
                {
                    "name": "Edit",
                    "input": {
                        "file_path": "/workspace/notes.md",
                        "old_string": "status: todo",
                        "new_string": "status: done",
                    },
                }
            ]
        },
        {
            "tool_uses": [
                {
                    "name": "Write",
                    # The model "knows" the word only from the Read result it got back.
                    "input": {
                        "file_path": "/artifacts/answer.txt",
                        "content": "answer={{find:secret=(\\w+)}}\n",
                    },
                }
            ]
        },
        {"text": "Edited notes.md and wrote the answer."},
    ]
    upload = api.upload({"input.txt": f"the secret={word} is here\n", "notes.md": "status: todo\n"})
    job = api.spawn(
        kind="sub_agent", prompt="Do the task. [[script:edit]]", upload_id=upload, timeout_s=300
    )
    done = api.wait(job["id"])
    log = api.logs(job["id"])
    assert done["status"] == "succeeded", (done, log[-3000:])
    assert done["exit_code"] == 0

    # The artifact and the workspace change both come back through the API.
    listed = api.artifacts(job["id"])
    assert api.artifact(job["id"], "answer.txt") == f"answer={word}\n".encode()
    assert "summary.json" in listed
    changes = json.loads(api.artifact(job["id"], "_workspace/changes.json"))
    assert changes["modified"] == ["notes.md"], changes
    assert changes["added"] == [] and changes["deleted"] == []
    assert api.artifact(job["id"], "_workspace/files/notes.md") == b"status: done\n"
    diff = api.artifact(job["id"], "_workspace/changes.diff").decode()
    assert "-status: todo" in diff and "+status: done" in diff

    # The transcript is in the job's log, and the summary says what happened.
    events = transcript(log)
    assert [u["name"] for u in tool_uses(events)] == ["Read", "Read", "Edit", "Write"]
    assert (
        events[-1]["type"] == "result"
        and events[-1]["result"] == "Edited notes.md and wrote the answer."
    )
    summary = api.summary(job["id"])
    assert summary["ok"] is True and summary["exit_reason"] == "completed"
    assert [c["name"] for c in summary["tool_calls"]] == ["Read", "Read", "Edit", "Write"]
    assert all(c["ok"] for c in summary["tool_calls"])
    assert summary["result"] == "Edited notes.md and wrote the answer."

    # The endpoint saw the key the token service holds for the agent role, on every call,
    # and the tool results (the file's content) came back to it.
    key = api.host.settings.secrets["ANTHROPIC_API_KEY"]
    seen = scripted_requests(model, "edit")
    assert len(seen) == 4
    assert {r["headers"].get("x-api-key") for r in seen} == {key}
    assert word in json.dumps(seen[1]["body"]["messages"])
    # The host's agent settings reached Claude Code: the model and Flashpods' system prompt.
    assert {r["body"]["model"] for r in seen} == {"standin-model"}
    system = json.dumps(seen[0]["body"]["system"])
    assert "You are a Flashpods sub-agent" in system and "/artifacts" in system
    # The token service gave it to exactly this job, in its agent role ...
    grants = audit_entries(api, job["id"])
    assert grants and all(g["spiffe_id"].endswith(f"/job/{job['id']}/sub_agent") for g in grants)
    assert any("ANTHROPIC_API_KEY" in g["granted"] for g in grants)
    # ... and the key is in neither the API's config nor the job's record.
    assert key not in json.dumps(api.host.api_config)
    assert key not in json.dumps(done)


def test_worker_gets_no_anthropic_credential(subagent_host, model):
    """A worker job (in the agent image, with curl and Claude Code) holds no Anthropic key."""
    api = subagent_host()
    url = f"http://{MODEL_ADDR}:{model.port}/v1/messages"
    body = json.dumps(
        {
            "model": "standin-model",
            "max_tokens": 16,
            "tools": [{"name": "noop", "input_schema": {"type": "object"}}],
            "messages": [{"role": "user", "content": "[[script:worker]]"}],
        }
    )
    command = (
        "echo ANTHROPIC_VARS=$(env | grep -c '^ANTHROPIC_'); "
        "echo GITHUB_TOKEN=${GITHUB_TOKEN:+granted}; "
        f"curl -sS -m 20 -X POST {url} -H 'content-type: application/json' "
        # Sends whatever key the environment holds, or the word <unset>.
        '-H "x-api-key: ${ANTHROPIC_API_KEY-<unset>}" '
        '-H "authorization: Bearer ${ANTHROPIC_AUTH_TOKEN-<unset>}" '
        f"--data '{body}'; echo; "
        # Claude Code itself cannot run as a worker: the entrypoint finds no credential.
        "FLASHPODS_PROMPT=x /flashpods/agent/entrypoint; echo entrypoint_exit=$?"
    )
    model.model.scripts["worker"] = [{"text": "hello worker"}]
    job = api.spawn(
        kind="worker", command=command, image="localhost/flashpods-agent:latest", timeout_s=120
    )
    done = api.wait(job["id"])
    log = api.logs(job["id"]).decode()
    assert done["status"] == "succeeded", (done, log)
    assert "ANTHROPIC_VARS=0" in log
    assert "GITHUB_TOKEN=granted" in log  # the token service did answer the worker
    assert "hello worker" in log  # the endpoint was reached ...
    seen = scripted_requests(model, "worker")
    assert len(seen) == 1
    assert seen[0]["headers"].get("x-api-key") == "<unset>"  # ... without any key
    assert seen[0]["headers"].get("authorization") == "Bearer <unset>"
    assert "no Anthropic credential" in log and "entrypoint_exit=64" in log
    key = api.host.settings.secrets["ANTHROPIC_API_KEY"]
    assert key not in log
    assert key not in json.dumps(model.model.requests)
    grants = audit_entries(api, job["id"])
    assert grants and all(g["spiffe_id"].endswith(f"/job/{job['id']}/worker") for g in grants)
    assert not any("ANTHROPIC_API_KEY" in g["granted"] for g in grants)


def test_subagent_cannot_spawn_a_job(subagent_host, model):
    """The agent's Bash tool tries POST /jobs on every host address: nothing answers.

    The API listens on every address of the host here, so what keeps the agent out is the
    firewall, not a loopback-only bind.
    """
    api = subagent_host(api_host="0.0.0.0")
    port = api.host.api_port
    # Control: from the host itself (root, not the job uid) the API answers on that address.
    control = api.lab.run(["curl", "-sS", "-m", "5", f"http://{HOST_ADDR}:{port}/healthz"])
    assert control.returncode == 0 and '"ok"' in control.stdout, control
    token = api.host.api_token  # even with the real token, the API is out of reach
    targets = ["127.0.0.1", "10.0.2.2", HOST_ADDR, "10.0.0.1"]
    payload = '{"kind": "worker", "command": "echo nested"}'
    curl = "; ".join(
        f"curl -sS -m 5 -X POST http://{addr}:{port}/jobs -H 'Authorization: Bearer {token}' "
        f"-H 'content-type: application/json' --data '{payload}'"
        for addr in targets
    )
    request = f"u.Request('http://{HOST_ADDR}:{port}/jobs', data=b'{{}}', method='POST')"
    python = f'python3 -c "import urllib.request as u; u.urlopen({request}, timeout=5)"'
    model.model.scripts["spawn"] = [
        {"tool_uses": [{"name": "Bash", "input": {"command": curl, "description": "spawn a job"}}]},
        {
            "tool_uses": [
                {"name": "Bash", "input": {"command": python, "description": "spawn again"}}
            ]
        },
        {"text": "I could not start another job."},
    ]
    job = api.spawn(kind="sub_agent", prompt="Spawn a nested job. [[script:spawn]]", timeout_s=300)
    done = api.wait(job["id"])
    log = api.logs(job["id"])
    assert done["status"] == "failed", (done, log[-3000:])
    assert done["exit_code"] == EXIT_TOOL_ERRORS
    # The attempt is in the transcript: both commands ran and failed to connect.
    events = transcript(log)
    uses = tool_uses(events)
    results = tool_results(events)
    assert [u["input"]["command"] for u in uses] == [curl, python]
    curl_out, python_out = (result_text(results[u["id"]]) for u in uses)
    assert all(results[u["id"]].get("is_error") for u in uses)
    for addr in targets:
        assert f"Failed to connect to {addr} port {port}" in curl_out, curl_out
    assert "URLError" in python_out or "Connection refused" in python_out, python_out
    # No job but this one exists on the host.
    assert [j["id"] for j in api.jobs()] == [job["id"]]
    summary = api.summary(job["id"])
    assert summary["exit_reason"] == "tool_errors" and summary["tool_errors"] == 2


# A model that keeps the agent busy: one Bash call that sleeps far longer than the test.
SLEEPER = [
    {
        "tool_uses": [
            {
                "name": "Bash",
                "input": {
                    "command": "echo sleeping; sleep 600",
                    "timeout": 600000,
                    "description": "wait",
                },
            }
        ]
    },
    {"text": "woke up"},
]


def _busy_job(api, model, script: str, timeout_s: float) -> dict:
    model.model.scripts[script] = SLEEPER
    job = api.spawn(kind="sub_agent", prompt=f"Wait. [[script:{script}]]", timeout_s=timeout_s)
    # Busy means: the model has been asked and the agent is inside its Bash call.
    api.wait_for(
        "the agent's first model call",
        lambda: scripted_requests(model, script) or api.job(job["id"])["status"] in FINAL,
        120,
    )
    assert scripted_requests(model, script), (
        f"the job ended before the agent started: {api.job(job['id'])}"
    )
    return job


def test_subagent_timeout_stops_a_busy_agent(subagent_host, model):
    api = subagent_host()
    job = _busy_job(api, model, "sleep-timeout", timeout_s=15)
    done = api.wait(job["id"], timeout=120)
    assert done["status"] == "timed_out", done
    events = transcript(api.logs(job["id"]))
    assert [u["input"]["command"] for u in tool_uses(events)] == ["echo sleeping; sleep 600"]
    # The model was never asked again: the agent did not get past its sleep.
    assert len(scripted_requests(model, "sleep-timeout")) == 1
    summary = api.summary(job["id"])
    assert summary["exit_reason"] == "terminated" and summary["ok"] is False


def test_kill_job_stops_a_busy_agent(subagent_host, model):
    api = subagent_host()
    job = _busy_job(api, model, "sleep-kill", timeout_s=600)
    assert api.job(job["id"])["status"] == "running"
    api.kill(job["id"])
    done = api.wait(job["id"], timeout=60)
    assert done["status"] == "killed", done
    assert len(scripted_requests(model, "sleep-kill")) == 1
    # The entrypoint saw SIGTERM, stopped Claude Code and still wrote its summary.
    summary = api.summary(job["id"])
    assert summary["exit_reason"] == "terminated" and summary["ok"] is False
    # Claude Code ends the sleep it was running (its result says "Exit code 137"), or the
    # stop came before any result: either way the call did not succeed.
    assert [c["name"] for c in summary["tool_calls"]] == ["Bash"]
    assert summary["tool_calls"][0]["ok"] is not True


@pytest.mark.parametrize(
    ("setting", "value", "reason", "message", "max_calls"),
    [
        # Claude Code counts the turn that hit the cap; it never asks the model a 5th time.
        ("FLASHPODS_AGENT_MAX_TURNS", "3", "max_turns", "maximum number of turns (3)", 4),
        # The stand-in bills about $0.00014 per call (its token counts at list prices).
        ("FLASHPODS_AGENT_MAX_BUDGET_USD", "0.0005", "budget_exhausted", "maximum budget", 8),
    ],
)
def test_caps_from_the_host_config_end_the_run(
    subagent_host, model, setting, value, reason, message, max_calls
):
    api = subagent_host(agent_env={setting: value})
    model.model.scripts["forever"] = [
        {"repeat": {"name": "Bash", "input": {"command": "echo tick"}}}
    ]
    job = api.spawn(kind="sub_agent", prompt="Keep going. [[script:forever]]", timeout_s=300)
    done = api.wait(job["id"])
    assert done["status"] == "failed" and done["exit_code"] == EXIT_AGENT_ERROR, done
    summary = api.summary(job["id"])
    assert summary["exit_reason"] == reason, summary
    assert message in summary["message"]
    assert 2 <= len(scripted_requests(model, "forever")) <= max_calls
    # No call failed; the budget stops the run before the last one is answered.
    assert all(c["ok"] is not False for c in summary["tool_calls"])


def test_failed_tool_calls_fail_the_run_although_claude_exits_0(subagent_host, model):
    api = subagent_host()
    model.model.scripts["broken"] = [
        {"tool_uses": [{"name": "Read", "input": {"file_path": "/workspace/missing.txt"}}]},
        {"tool_uses": [{"name": "Bash", "input": {"command": "exit 3"}}]},
        {"text": "Done, I think."},
    ]
    job = api.spawn(kind="sub_agent", prompt="Try. [[script:broken]]", timeout_s=300)
    done = api.wait(job["id"])
    log = api.logs(job["id"])
    assert done["status"] == "failed" and done["exit_code"] == EXIT_TOOL_ERRORS, (done, log[-2000:])
    events = transcript(log)
    result = events[-1]
    assert result["type"] == "result" and result["is_error"] is False  # Claude Code: success
    summary = api.summary(job["id"])
    assert summary["agent_exit_code"] == 0
    assert summary["exit_reason"] == "tool_errors" and summary["tool_errors"] == 2
    assert [(c["name"], c["ok"]) for c in summary["tool_calls"]] == [
        ("Read", False),
        ("Bash", False),
    ]
    assert b"FAILED: 2 tool call(s) failed (Bash, Read)" in log
