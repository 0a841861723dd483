"""Every failure is a tool error with a sentence that says what to fix, and nothing is
written outside the places the client allowed."""

import socket

import anyio
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.root]  # a real dev host needs root


def unused_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_change(case, host, laptop):
    """How each case bends the laptop's environment."""
    if case == "api_down":
        return {"FLASHPODS_API_URL": f"http://127.0.0.1:{unused_port()}"}
    if case == "wrong_token":
        (laptop / "wrong-token").write_text("not-the-token\n")
        return {"FLASHPODS_API_TOKEN_FILE": str(laptop / "wrong-token")}
    if case == "rsync_module":
        return {"FLASHPODS_RSYNC_URL": host.rsync_url.rsplit("/", 1)[0] + "/nosuchmodule"}
    if case == "rsync_port":
        return {"FLASHPODS_RSYNC_URL": f"rsync://127.0.0.1:{unused_port()}/uploads"}
    return {}


CASES = [
    # (case, tool, arguments, words of the sentence)
    ("api_down", "list_jobs", {}, "is the WireGuard tunnel up"),
    ("wrong_token", "list_jobs", {}, "FLASHPODS_API_TOKEN does not match the host's token file"),
    ("rsync_module", "spawn_worker", {"command": "true", "path": "project"}, "no such module"),
    (
        "rsync_port",
        "spawn_worker",
        {"command": "true", "path": "project"},
        "refused the connection",
    ),
    ("unknown_job", "get_job_status", {"job_id": "job_aaaaaaaaaaaa"}, "Unknown job"),
    ("unknown_job", "get_job_artifacts", {"job_id": "job_aaaaaaaaaaaa"}, "Unknown job"),
    ("outside_roots", "spawn_worker", {"command": "true", "path": "/etc"}, "outside the client"),
    ("ssh", "spawn_worker", {"command": "true", "path": "{home}/.ssh"}, "never reads or writes"),
    (
        "ssh_dest",
        "get_job_artifacts",
        {"job_id": "job_aaaaaaaaaaaa", "dest": "{home}/.ssh"},
        "never reads or writes",
    ),
    (
        "outside_dest",
        "get_job_artifacts",
        {"job_id": "job_aaaaaaaaaaaa", "dest": "/var/tmp/x"},
        "outside the client",
    ),
]


@pytest.mark.parametrize(("case", "tool", "args", "words"), CASES)
def test_failure_sentences(host, laptop, laptop_env, open_mcp, case, tool, args, words):
    env = {**laptop_env, **env_change(case, host, laptop)}
    args = {k: v.format(home=laptop) for k, v in args.items()}
    before = sorted(p.name for p in (laptop / ".ssh").iterdir())

    async def main():
        # roots = the whole laptop HOME, so ~/.ssh is refused by rule, not by roots
        async with open_mcp(env, roots=[laptop]) as s:
            return await s.call_tool(tool, args)

    result = anyio.run(main)
    assert result.isError, result.content
    text = result.content[0].text
    assert words in text, text
    assert host.api_token not in text
    if case == "api_down":
        assert f"tried {env['FLASHPODS_API_URL']}" in text
    assert sorted(p.name for p in (laptop / ".ssh").iterdir()) == before
