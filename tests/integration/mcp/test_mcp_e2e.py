"""The MCP server end to end: the SDK's stdio client drives `flashpods-mcp`, which
uploads with rsync to a real dev host's rsyncd and runs rootless Podman jobs there."""

import os
import time

import anyio
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.root]  # a real dev host needs root
JOB_TIMEOUT_S = 120


async def call(session, tool, args, **kw):
    result = await session.call_tool(tool, args, **kw)
    assert not result.isError, f"{tool}: {result.content[0].text}"
    return result.structuredContent


async def read_until_final(session, job_id):
    """get_job_output with long-polls until final; returns the whole output."""
    text, offset = "", 0
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        out = await call(
            session, "get_job_output", {"job_id": job_id, "offset": offset, "wait_s": 10}
        )
        text += out["text"]
        offset = out["next_offset"]
        if out["final"]:
            return text
    raise AssertionError(f"{job_id} not final after {JOB_TIMEOUT_S} s; output so far: {text!r}")


WORKER_COMMAND = (
    "cat data.txt; ls -a; mkdir -p /artifacts/out; wc -c < data.txt > /artifacts/out/count.txt; "
    "ln -s /etc/passwd /artifacts/passwd-link; echo finished"
)


def test_worker_job_round_trip(laptop, laptop_env, open_mcp):
    project = laptop / "project"
    progress = []

    async def on_progress(done, total, message):
        progress.append((done, total, message))

    async def main():
        async with open_mcp(laptop_env, roots=[project]) as s:
            spawned = await call(
                s, "spawn_worker", {"command": WORKER_COMMAND}, progress_callback=on_progress
            )
            job_id = spawned["job"]["id"]
            output = await read_until_final(s, job_id)
            status = await call(s, "get_job_status", {"job_id": job_id})
            tail = await call(s, "get_job_output", {"job_id": job_id, "tail_lines": 1})
            artifacts = await call(s, "get_job_artifacts", {"job_id": job_id})
            listed = await call(s, "list_jobs", {"limit": 10})
            return spawned, output, status, tail, artifacts, listed

    spawned, output, status, tail, artifacts, listed = anyio.run(main)
    job_id = spawned["job"]["id"]
    assert spawned["upload"]["source"] == str(project)  # the first root, by default
    assert progress, "no progress notification during the upload"
    assert "hello from the laptop" in output and "finished" in output
    assert "scratch.tmp" not in output  # .gitignore honoured
    assert ".gitignore" in output
    assert (status["status"], status["exit_code"]) == ("succeeded", 0)
    assert tail["text"] == "finished\n" and tail["final"]
    # default dest: ./flashpods-artifacts/<job_id> under the first root
    dest = project / "flashpods-artifacts" / job_id
    assert artifacts["dest"] == str(dest)
    files = {f["path"]: f["size"] for f in artifacts["files"]}
    assert files["out/count.txt"] == 3
    # what the job changed in /workspace comes back too (the host's _workspace/ record)
    assert "_workspace/changes.json" in files
    assert not [p for p in files if p != "out/count.txt" and not p.startswith("_workspace/")]
    assert (dest / "out" / "count.txt").read_text() == "22\n"
    # the job's symlink to /etc/passwd never becomes a file or a link on the laptop
    assert not os.path.lexists(dest / "passwd-link")
    assert job_id in [j["id"] for j in listed["jobs"]]


def test_artifacts_into_an_explicit_dest_with_progress(laptop, laptop_env, open_mcp):
    project = laptop / "project"
    progress = []

    async def on_progress(done, total, message):
        progress.append((done, message))

    command = "echo x > /artifacts/a.txt; dd if=/dev/urandom of=/artifacts/big bs=1024 count=4096"

    async def main():
        async with open_mcp(laptop_env, roots=[project]) as s:
            job = await call(s, "spawn_worker", {"command": command, "path": "."})
            await read_until_final(s, job["job"]["id"])
            return await call(
                s,
                "get_job_artifacts",
                {"job_id": job["job"]["id"], "dest": "results"},
                progress_callback=on_progress,
            )

    artifacts = anyio.run(main)
    assert artifacts["dest"] == str(project / "results")
    assert (project / "results" / "a.txt").read_text() == "x\n"
    assert (project / "results" / "big").stat().st_size == 4096 * 1024
    assert progress and "downloading artifacts" in progress[-1][1]


def test_kill_a_sleeping_job(laptop, laptop_env, open_mcp):
    async def main():
        async with open_mcp(laptop_env, roots=[laptop / "project"]) as s:
            job = await call(s, "spawn_worker", {"command": "echo started; sleep 300"})
            job_id = job["job"]["id"]
            first = await call(s, "get_job_output", {"job_id": job_id, "wait_s": 60})
            killed = await call(s, "kill_job", {"job_id": job_id})
            again = await call(s, "kill_job", {"job_id": job_id})  # idempotent
            deadline = time.monotonic() + 60
            status = killed
            while status["status"] != "killed" and time.monotonic() < deadline:
                await anyio.sleep(0.5)
                status = await call(s, "get_job_status", {"job_id": job_id})
            return first, killed, again, status

    first, killed, again, status = anyio.run(main)
    assert first["text"] == "started\n"
    assert status["status"] == "killed"
    assert again["id"] == killed["id"]


def test_sub_agent_job(laptop, laptop_env, open_mcp):
    async def main():
        async with open_mcp(laptop_env, roots=[laptop / "project"]) as s:
            job = await call(s, "spawn_sub_agent", {"prompt": "make the tests pass"})
            job_id = job["job"]["id"]
            output = await read_until_final(s, job_id)
            status = await call(s, "get_job_status", {"job_id": job_id})
            artifacts = await call(s, "get_job_artifacts", {"job_id": job_id})
            return job, output, status, artifacts

    job, output, status, artifacts = anyio.run(main)
    assert job["job"]["kind"] == "sub_agent"
    assert "agent prompt: make the tests pass" in output
    assert "data.txt" in output  # the agent worked in the uploaded /workspace
    assert status["status"] == "succeeded"
    assert "prompt.txt" in [f["path"] for f in artifacts["files"]]


def test_delta_upload_of_an_unchanged_tree(laptop, laptop_env, open_mcp):
    tree = laptop / "project" / "many"
    tree.mkdir()
    for i in range(1000):
        (tree / f"file{i:04}.bin").write_bytes(os.urandom(4096))

    async def main():
        async with open_mcp(laptop_env, roots=[laptop / "project"]) as s:
            first = await call(s, "spawn_worker", {"command": "true", "path": "many"})
            # the host keeps an upload as a basis once a job has used it
            await read_until_final(s, first["job"]["id"])
            second = await call(s, "spawn_worker", {"command": "ls | wc -l", "path": "many"})
            output = await read_until_final(s, second["job"]["id"])
            return first["upload"], second["upload"], output

    first, second, output = anyio.run(main)
    assert first["total_bytes"] == second["total_bytes"] == 1000 * 4096
    assert first["bytes_sent"] > 4_000_000
    assert second["linked_from_basis"]
    # rsync's own statistics: the unchanged tree costs only its file list
    assert second["bytes_sent"] < first["bytes_sent"] / 20, (first, second)
    assert output.strip() == "1000"  # and the job still sees every file
