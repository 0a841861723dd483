"""The entrypoint's decisions on their own (no container): how a transcript becomes an
exit code and a summary, and which command line and environment Claude Code gets.

The end-to-end tests show each outcome with the real agent; these pin down the edges
(malformed lines, tool calls without results, the opt-out of the tool-error rule).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
from pathlib import Path

import pytest

ENTRYPOINT = Path(__file__).resolve().parents[3] / "images" / "agent" / "entrypoint"


@pytest.fixture(scope="module")
def ep():
    loader = importlib.machinery.SourceFileLoader("flashpods_agent_entrypoint", str(ENTRYPOINT))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def line(event: dict) -> bytes:
    return json.dumps(event).encode() + b"\n"


def tool_use(tid: str, name: str) -> dict:
    content = [{"type": "tool_use", "id": tid, "name": name, "input": {}}]
    return {"type": "assistant", "message": {"content": content}}


def tool_result(tid: str, error: bool = False, text: str = "fine") -> dict:
    block = {"type": "tool_result", "tool_use_id": tid, "content": text, "is_error": error}
    return {"type": "user", "message": {"content": [block]}}


# What Claude Code prints of the proxy's refusal: the message only.
REFUSAL = (
    "Failed to authenticate. API Error: 403 budget_exhausted (flashpods-proxy): job "
    "job_aaaaaaaaaaaa has used its model token budget (15 tokens)"
)


def result(subtype: str = "success", is_error: bool = False, **extra: object) -> dict:
    return {"type": "result", "subtype": subtype, "is_error": is_error, "num_turns": 2} | extra


def feed(ep, *events: dict | bytes):
    transcript = ep.Transcript()
    for event in events:
        transcript.feed(event if isinstance(event, bytes) else line(event))
    return transcript


@pytest.mark.parametrize(
    ("events", "returncode", "terminated", "expected"),
    [
        # Every tool call worked and the agent says success.
        (
            [tool_use("a", "Read"), tool_result("a"), result(terminal_reason="completed")],
            0,
            False,
            (0, "completed"),
        ),
        # Claude Code reports success and exits 0, but a tool call failed: a failed run.
        (
            [tool_use("a", "Bash"), tool_result("a", error=True), result()],
            0,
            False,
            (2, "tool_errors"),
        ),
        # The turn cap: Claude Code's own error result.
        (
            [result("error_max_turns", True, terminal_reason="max_turns", errors=["cap"])],
            1,
            False,
            (1, "max_turns"),
        ),
        # An API error ends in a "success" subtype with is_error set.
        (
            [result("success", True, terminal_reason="api_error", result="API Error")],
            1,
            False,
            (1, "api_error"),
        ),
        # No result event at all: it crashed or never reached the model.
        ([tool_use("a", "Read")], 0, False, (3, "no_result")),
        # Stopped by SIGTERM, whatever the transcript says.
        ([tool_use("a", "Bash")], -15, True, (143, "terminated")),
        # A success result, yet the process failed.
        ([result(terminal_reason="completed")], 1, False, (1, "agent_exit_code")),
        # The host's proxy refused a model call at the job's budget: Claude Code's API
        # error, or the SIGTERM of the reaper that stops the job at its budget.
        (
            [result("success", True, terminal_reason="api_error", result=REFUSAL)],
            1,
            False,
            (1, "budget_exhausted"),
        ),
        (
            [
                tool_use("a", "Bash"),
                {"type": "assistant", "message": {"content": [{"type": "text", "text": REFUSAL}]}},
            ],
            -15,
            True,
            (1, "budget_exhausted"),
        ),  # fmt: skip
        # The same words in a run that ended well change nothing.
        (
            [tool_use("a", "Read"), tool_result("a", text=REFUSAL), result()],
            0,
            False,
            (0, "success"),
        ),  # fmt: skip
    ],
)
def test_verdict(ep, events, returncode, terminated, expected):
    code, reason, sentence = ep.verdict(feed(ep, *events), returncode, terminated)
    assert (code, reason) == expected
    assert sentence


def test_tool_errors_can_be_accepted_by_the_host(ep, monkeypatch):
    monkeypatch.setenv("FLASHPODS_AGENT_FAIL_ON_TOOL_ERROR", "0")
    transcript = feed(
        ep, tool_use("a", "Bash"), tool_result("a", error=True), result(terminal_reason="completed")
    )
    assert ep.verdict(transcript, 0, False)[:2] == (0, "completed")


def test_transcript_records_calls_in_order_and_skips_noise(ep):
    transcript = feed(
        ep,
        {"type": "system", "subtype": "init", "model": "m-1"},
        b"not json at all\n",
        b"[1, 2]\n",
        tool_use("a", "Read"),
        tool_use("b", "Bash"),
        tool_use("a", "Read"),  # the same block again (partial messages) counts once
        tool_result("b", error=True, text="Exit code 1\n" + "x" * 1000),
        tool_result("a"),
        tool_use("c", "Write"),  # never answered
        result(),
    )
    calls = transcript.tool_calls()
    assert [(c["name"], c["ok"]) for c in calls] == [
        ("Read", True),
        ("Bash", False),
        ("Write", None),
    ]
    assert (
        calls[1]["error"].startswith("Exit code 1")
        and len(calls[1]["error"]) == ep.ERROR_TEXT_LIMIT
    )
    assert transcript.model == "m-1" and transcript.result["type"] == "result"


def test_command_line_from_the_environment(ep, monkeypatch):
    monkeypatch.setenv("FLASHPODS_PROMPT", "fix the bug")
    monkeypatch.setenv("FLASHPODS_AGENT_MAX_TURNS", "7")
    monkeypatch.setenv("FLASHPODS_AGENT_MAX_BUDGET_USD", "1.5")
    monkeypatch.setenv("FLASHPODS_AGENT_SYSTEM_PROMPT", "Run the tests.")
    monkeypatch.delenv("FLASHPODS_AGENT_TOOLS", raising=False)
    argv = ep.claude_command(["--effort", "low"])
    assert argv[:3] == ["claude", "-p", "fix the bug"]
    assert argv[argv.index("--output-format") + 1] == "stream-json" and "--verbose" in argv
    assert argv[argv.index("--tools") + 1] == ep.DEFAULT_TOOLS
    assert argv[argv.index("--max-turns") + 1] == "7"
    assert argv[argv.index("--max-budget-usd") + 1] == "1.5"
    system = argv[argv.index("--append-system-prompt") + 1]
    assert "/workspace" in system and "/artifacts" in system and system.endswith("Run the tests.")
    assert "--dangerously-skip-permissions" in argv
    assert argv[-2:] == ["--effort", "low"]


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("FLASHPODS_AGENT_MAX_TURNS", "0", "must be at least 1"),
        ("FLASHPODS_AGENT_MAX_TURNS", "ten", "is not a whole number"),
        ("FLASHPODS_AGENT_MAX_BUDGET_USD", "-1", "must be above 0"),
        ("FLASHPODS_AGENT_MAX_BUDGET_USD", "lots", "is not a number of US dollars"),
    ],
)
def test_bad_caps_are_refused_with_a_sentence(ep, monkeypatch, name, value, message):
    monkeypatch.setenv("FLASHPODS_PROMPT", "x")
    monkeypatch.setenv(name, value)
    with pytest.raises(ep.ConfigError, match=message):
        ep.claude_command([])


def test_environment_moves_home_out_of_the_workspace(ep, monkeypatch, tmp_path):
    monkeypatch.setattr(ep, "WORKSPACE", tmp_path / "workspace")
    monkeypatch.setattr(ep, "DEFAULT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HOME", str(tmp_path / "workspace"))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-x")
    env = ep.prepare_environment()
    assert env["HOME"] == str(tmp_path / "home") and (tmp_path / "home").is_dir()
    assert env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    monkeypatch.delenv("ANTHROPIC_AUTH_TOKEN", raising=False)
    with pytest.raises(ep.ConfigError, match="token service must grant"):
        ep.prepare_environment()
