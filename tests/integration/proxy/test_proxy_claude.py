"""Real Claude Code in the agent image reaches the (stand-in) Messages API only through
the credential proxy: the model sees the real key on every call, the container holds
only the placeholder (scanned: every process's environment, /tmp, the log, inspect)."""

from __future__ import annotations

import json
import re

import pytest
from netlab import MODEL_ADDR
from standin_model import StandinModel, StandinServer

pytestmark = [pytest.mark.root, pytest.mark.slow]

MODEL_PORT = 8443  # the stand-in origins hold 443 on the same address
SCAN = (
    "for p in /proc/[0-9]*; do cat $p/environ 2>/dev/null; echo; done > /artifacts/environ.txt;"
    " tar -cf /artifacts/tmp.tar -C /tmp . 2>/dev/null; echo scanned"
)


def pieces(secret: str) -> set[str]:
    random_part = re.split(r"[_-]", secret)[-1]
    return {random_part[i : i + 8] for i in range(len(random_part) - 7)}


def model_server(model: StandinModel, origin, lab) -> StandinServer:
    """The stand-in Messages API in the test internet, with TLS under the stand-in
    origins' certificate (it names api.anthropic.com)."""
    server = StandinServer(model, host=MODEL_ADDR, port=MODEL_PORT, netns=lab.path(lab.inet))
    server._httpd.socket = origin.tls_context.wrap_socket(server._httpd.socket, server_side=True)
    return server


def claude_host(proxy_host, usage_dir, **api: object):
    """A proxy host whose sub-agents run real Claude Code against the stand-in model."""
    env = {
        "ANTHROPIC_BASE_URL": f"https://api.anthropic.com:{MODEL_PORT}",
        "ANTHROPIC_MODEL": "standin-model",
        "FLASHPODS_AGENT_MAX_TURNS": "10",
        "CLAUDE_CODE_MAX_RETRIES": "1",
    }
    return proxy_host(
        proxy={"usage_dir": str(usage_dir), "budget_tokens": 1_000_000},
        api={"sub_agent": {"env": env}, **api},
    )


def test_claude_code_uses_the_model_only_through_the_proxy(proxy_host, origin, lab, usage_dir):
    model = StandinModel({"scan": [{"tool_uses": [{"name": "Bash", "input": {"command": SCAN}}]},
                                   {"text": "Scanned."}]})  # fmt: skip
    with model_server(model, origin, lab):
        api, keys = claude_host(proxy_host, usage_dir)
        job = api.spawn(kind="sub_agent", prompt="Scan. [[script:scan]]", timeout_s=300)
        done = api.wait(job["id"], timeout=300)
        log = api.logs(job["id"])
        assert done["status"] == "succeeded", log.decode(errors="replace")[-3000:]

    key = keys["ANTHROPIC_API_KEY"]
    calls = [r for r in model.requests if r["path"].startswith("/v1/messages")]
    assert calls and all(r["headers"].get("x-api-key") == key for r in calls), [
        r["headers"].get("x-api-key", "")[:12] for r in calls
    ]
    environ = api.artifact(job["id"], "environ.txt")
    assert f"fpph.ANTHROPIC_API_KEY.{job['id']}".encode() in environ
    blobs = {
        "environ": environ,
        "tmp": api.artifact(job["id"], "tmp.tar"),
        "log": log,
        "inspect": api.host.podman("inspect", job["id"]).stdout.encode(),
    }
    for name, blob in blobs.items():
        for secret_name, secret in keys.items():
            found = sorted(p for p in pieces(secret) if p.encode() in blob)
            assert not found, f"{secret_name} pieces in {name}: {found}"
    usage = json.loads((usage_dir / f"{job['id']}.json").read_text())
    assert usage["requests"] >= 2 and usage["output_tokens"] > 0, usage


def test_claude_code_at_its_budget_is_refused_stopped_and_says_so(
    proxy_host, origin, lab, usage_dir, agent_image
):
    """Real Claude Code with a per-job budget one model call can fill: its next call is
    refused by the proxy (403 budget_exhausted, never reaching the model), the job ends
    `failed` with `stop_reason` budget_exhausted, its usage is recorded, and the agent's
    own summary.json says budget_exhausted too."""
    bash = {"name": "Bash", "input": {"command": "echo one"}}
    model = StandinModel({"work": [{"tool_uses": [bash]}, {"tool_uses": [bash]},
                                   {"text": "Done."}]})  # fmt: skip
    with model_server(model, origin, lab):
        api, _keys = claude_host(
            proxy_host,
            usage_dir,
            storage={"usage": str(usage_dir)},  # the API reads it: stops at the budget
            kill_grace_s=30,
            images={
                "sub_agent": agent_image,
                "allowed": ["localhost/flashpods-worker:latest", agent_image],
            },
        )
        # The stand-in answers 10 input + 5 output tokens: one call fills 15.
        job = api.spawn(kind="sub_agent", prompt="Work. [[script:work]]", budget_tokens=15)
        done = api.wait(job["id"], timeout=300)
        log = api.logs(job["id"]).decode(errors="replace")

    assert (done["status"], done["stop_reason"]) == ("failed", "budget_exhausted"), log[-3000:]
    assert done["error"].startswith("budget_exhausted: "), done["error"]
    usage = json.loads((usage_dir / f"{job['id']}.json").read_text())
    served = [r for r in model.requests if r["path"].startswith("/v1/messages")]
    assert usage["requests"] == len(served) >= 1, (usage, len(served))
    assert usage["input_tokens"] + usage["output_tokens"] >= 15, usage
    summary = json.loads(api.artifact(job["id"], "summary.json"))
    assert summary["exit_reason"] == "budget_exhausted", (summary, log[-3000:])
