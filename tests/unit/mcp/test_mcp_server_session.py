"""The MCP server over stdio with the SDK's client, against a fake API and a real rsync
daemon: schemas and annotations, roots and confinement, progress, structured results,
the upload basis memory and tool errors."""

import json

import anyio
import pytest

JOB = "job_0123456789ab"
TOKEN = "tok-session-secret"


@pytest.fixture
def home(tmp_path):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / "proj").mkdir()
    for i in range(20):
        (home / "proj" / f"f{i}.txt").write_text("x" * 5000)
    return home


@pytest.fixture
def env(home, fake_api, rsync_daemon):
    return {
        "HOME": str(home),
        "FLASHPODS_API_URL": fake_api.url,
        "FLASHPODS_API_TOKEN": TOKEN,
        "FLASHPODS_RSYNC_URL": rsync_daemon.url,
    }


@pytest.fixture
def api_routes(fake_api):
    uploads = iter(["up_aaaaaaaaaaaaaaaa", "up_bbbbbbbbbbbbbbbb"])
    fake_api.routes[("POST", "/uploads")] = lambda h: (201, {"upload_id": next(uploads)})
    job = {"id": JOB, "kind": "worker", "status": "queued", "queue_position": 1}
    fake_api.routes[("POST", "/jobs")] = (201, {"job": job})
    fake_api.routes[("GET", "/jobs")] = (200, {"jobs": [job]})
    return fake_api


def test_tools_have_schemas_annotations_and_output_schemas(env, open_mcp):
    async def main():
        async with open_mcp(env, roots=None) as session:
            return {t.name: t for t in (await session.list_tools()).tools}

    tools = anyio.run(main)
    assert set(tools) == {
        "spawn_worker",
        "spawn_sub_agent",
        "get_job_status",
        "get_job_output",
        "get_job_artifacts",
        "kill_job",
        "list_jobs",
    }
    for tool in tools.values():
        assert tool.outputSchema, tool.name
        assert tool.annotations is not None, tool.name
        for name, prop in tool.inputSchema["properties"].items():
            assert prop.get("description"), f"{tool.name}.{name} has no description"
    assert tools["list_jobs"].annotations.readOnlyHint is True
    assert tools["kill_job"].annotations.destructiveHint is True
    assert tools["kill_job"].annotations.idempotentHint is True
    assert tools["spawn_worker"].annotations.readOnlyHint is False
    assert tools["spawn_worker"].inputSchema["required"] == ["command"]


def test_spawn_defaults_to_first_root_reports_progress_and_remembers_basis(
    env, home, api_routes, rsync_daemon, open_mcp
):
    progress = []

    async def on_progress(done, total, message):
        progress.append((done, total, message))

    async def main():
        async with open_mcp(env, roots=[home / "proj"]) as session:
            first = await session.call_tool(
                "spawn_worker", {"command": "ls"}, progress_callback=on_progress
            )
            second = await session.call_tool("spawn_worker", {"command": "ls", "path": "."})
            return first, second

    first, second = anyio.run(main)
    assert not first.isError, first.content
    assert first.structuredContent["job"]["id"] == JOB
    upload = first.structuredContent["upload"]
    assert upload["source"] == str(home / "proj")
    assert upload["total_bytes"] == 20 * 5000
    landed = rsync_daemon.uploads / "up_aaaaaaaaaaaaaaaa"
    assert sorted(p.name for p in landed.iterdir()) == sorted(f"f{i}.txt" for i in range(20))
    assert progress and progress[-1][0] == 20 * 5000
    # the job request named the upload, never the token
    jobs = [r for r in api_routes.requests if r["path"] == "/jobs"]
    assert jobs[0]["json"] == {
        "kind": "worker",
        "command": "ls",
        "upload_id": "up_aaaaaaaaaaaaaaaa",
    }
    assert TOKEN not in json.dumps([r["json"] for r in jobs])
    # the second upload of the same directory offered the first as its basis
    reservations = [r for r in api_routes.requests if r["path"] == "/uploads"]
    assert reservations[1]["json"] == {"basis": "up_aaaaaaaaaaaaaaaa"}
    assert not second.isError
    assert "Started job_0123456789ab worker queued queue position 1" in second.content[0].text


@pytest.mark.parametrize(
    ("tool", "args", "words"),
    [
        # outside the roots
        ("spawn_worker", {"command": "ls", "path": "/etc"}, "outside the client's roots"),
        # ~/.ssh, even though it is inside the root (home)
        ("spawn_worker", {"command": "ls", "path": "{home}/.ssh"}, "never reads or writes"),
        # home itself contains ~/.ssh
        ("spawn_worker", {"command": "ls", "path": "{home}"}, "contains"),
        ("get_job_artifacts", {"job_id": JOB, "dest": "/tmp/elsewhere"}, "outside the client's"),
        ("get_job_artifacts", {"job_id": JOB, "dest": "{home}/.ssh"}, "never reads or writes"),
        # a malformed job id never reaches the API
        ("get_job_status", {"job_id": "../../etc"}, "is not a job id"),
    ],
)
def test_refusals_are_tool_errors(env, home, fake_api, open_mcp, tool, args, words):
    args = {k: v.format(home=home) if isinstance(v, str) else v for k, v in args.items()}

    async def main():
        async with open_mcp(env, roots=[home]) as session:
            return await session.call_tool(tool, args)

    result = anyio.run(main)
    assert result.isError
    assert words in result.content[0].text
    assert fake_api.requests == []  # refused before any request


def test_no_roots_and_no_allow_list(env, home, open_mcp):
    async def main():
        async with open_mcp(env, roots=None) as session:
            no_path = await session.call_tool("spawn_worker", {"command": "ls"})
            with_path = await session.call_tool(
                "spawn_worker", {"command": "ls", "path": str(home / "proj")}
            )
            return no_path, with_path

    no_path, with_path = anyio.run(main)
    assert no_path.isError and "path is required" in no_path.content[0].text
    assert with_path.isError and "FLASHPODS_ALLOWED_PATHS" in with_path.content[0].text


def test_allow_list_without_roots(env, home, api_routes, open_mcp):
    env = {**env, "FLASHPODS_ALLOWED_PATHS": str(home / "proj")}

    async def main():
        async with open_mcp(env, roots=None) as session:
            return await session.call_tool(
                "spawn_worker", {"command": "ls", "path": str(home / "proj")}
            )

    result = anyio.run(main)
    assert not result.isError, result.content


def test_api_down_is_a_tool_error_naming_the_url(env, home, unused_port, open_mcp):
    env = {**env, "FLASHPODS_API_URL": f"http://127.0.0.1:{unused_port}"}

    async def main():
        async with open_mcp(env, roots=[home]) as session:
            return await session.call_tool("list_jobs", {})

    result = anyio.run(main)
    assert result.isError
    assert f"tried http://127.0.0.1:{unused_port}" in result.content[0].text


def test_list_jobs_structured_and_text(env, home, api_routes, open_mcp):
    async def main():
        async with open_mcp(env, roots=[home]) as session:
            return await session.call_tool("list_jobs", {"status": "queued", "limit": 5})

    result = anyio.run(main)
    assert result.structuredContent["jobs"][0]["id"] == JOB
    assert result.content[0].text == "job_0123456789ab worker queued queue position 1"
    assert api_routes.requests[-1]["path"] == "/jobs?status=queued&limit=5"


def test_job_results_carry_the_proxys_model_usage(env, home, fake_api, open_mcp):
    usage = {"requests": 3, "input_tokens": 30, "output_tokens": 80,
             "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
             "budget_tokens": 100, "budget_exhausted": True}  # fmt: skip
    job = {"id": JOB, "kind": "sub_agent", "status": "failed", "exit_code": 1, "usage": usage}
    fake_api.routes[("GET", "/jobs")] = (200, {"jobs": [job]})

    async def main():
        async with open_mcp(env, roots=[home]) as session:
            return await session.call_tool("list_jobs", {})

    result = anyio.run(main)
    assert result.structuredContent["jobs"][0]["usage"] == usage
    assert result.content[0].text == (
        f"{JOB} sub_agent failed exit 1 model 3 calls, 30 in / 80 out budget 100 tokens "
        "budget_exhausted"
    )


def test_spawn_sub_agent_asks_for_a_budget_and_the_summary_says_budget_exhausted(
    env, home, fake_api, open_mcp
):
    job = {"id": JOB, "kind": "sub_agent", "status": "running", "budget_tokens": 100}
    stopped = job | {
        "status": "failed",
        "stop_reason": "budget_exhausted",
        "error": "budget_exhausted: the job used its model token budget of 100 ...",
        "usage": {"requests": 3, "input_tokens": 30, "output_tokens": 80, "budget_tokens": 100,
                  "budget_exhausted": True},
    }  # fmt: skip
    fake_api.routes[("POST", "/uploads")] = (201, {"upload_id": "up_aaaaaaaaaaaaaaaa"})
    fake_api.routes[("POST", "/jobs")] = (201, {"job": job})
    fake_api.routes[("GET", f"/jobs/{JOB}")] = (200, {"job": stopped})

    async def main():
        async with open_mcp(env, roots=[home / "proj"]) as session:
            spawned = await session.call_tool(
                "spawn_sub_agent", {"prompt": "fix it", "budget_tokens": 100}
            )
            status = await session.call_tool("get_job_status", {"job_id": JOB})
            refused = await session.call_tool(
                "spawn_sub_agent", {"prompt": "fix it", "budget_tokens": 0}
            )
            return spawned, status, refused

    spawned, status, refused = anyio.run(main)
    assert not spawned.isError, spawned.content
    request = [r for r in fake_api.requests if r["path"] == "/jobs"][0]["json"]
    assert request["budget_tokens"] == 100
    assert spawned.structuredContent["job"]["budget_tokens"] == 100
    assert "budget 100 tokens" in spawned.content[0].text
    assert status.structuredContent["stop_reason"] == "budget_exhausted"
    assert status.structuredContent["usage"]["output_tokens"] == 80
    assert "budget_exhausted" in status.content[0].text
    # 0 is refused by the tool's schema, before any request
    assert refused.isError and len([r for r in fake_api.requests if r["path"] == "/jobs"]) == 1
