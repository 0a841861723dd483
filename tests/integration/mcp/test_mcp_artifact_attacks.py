"""A hostile job's /artifacts against the laptop, through a real dev host: git hooks and
config, editor tasks, direnv files and exec bits never land, whatever their spelling;
a deep tree and a flood of entries end in a clear result, never a traceback.

The MCP tool and the CLI both unpack into the project itself (dest = the project root,
which has its own .git), the way issue 14 reproduced the attack.
"""

import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest
from flashpods_mcp.config import load_settings
from flashpods_mcp.errors import FlashpodsError
from flashpods_mcp.operations import Flashpods
from flashpods_mcp.refused_names import fold
from flashpods_mcp.unpack import UnpackLimits

pytestmark = [pytest.mark.slow, pytest.mark.root]  # a real dev host needs root
FLASHPODS = str(Path(sys.executable).parent / "flashpods")
ZWNJ_GIT = ".g\u200cit"  # HFS+ ignores U+200C: the same name as .git on a Mac
# As deep as the host lets a job go (a tree deeper than 256 levels fails the job, and
# the host lists and serves nothing below that): the laptop writes it without
# recursing, and with a lowered limit skips it and says so.
DEPTH = 250
DEEP_FILE = "d/" * DEPTH + "f"

HOSTILE = rf"""
set -e
cd /artifacts
mkdir -p .git/hooks sub/.GIT .vscode bare/objects bare/refs '.git.' 'GIT~1'
printf '#!/bin/sh\ntouch "$HOME/pwned"\n' > .git/hooks/pre-commit
chmod +x .git/hooks/pre-commit
printf '[core]\n\tfsmonitor = touch pwned\n' > .git/config
echo x > sub/.GIT/config
echo x > '.git./config'
echo x > 'GIT~1/config'
z="$(printf '.g\342\200\214it')"; mkdir "$z"; echo x > "$z/config"
printf '[submodule "x"]\n' > .gitmodules
echo '{{}}' > .vscode/tasks.json
echo 'touch pwned' > .envrc
echo 'ref: refs/heads/main' > bare/HEAD; echo x > bare/objects/o; echo x > bare/refs/r
printf '#!/bin/sh\necho tool\n' > tool.sh; chmod +x tool.sh
echo ok > result.txt
i=0; while [ $i -lt {DEPTH} ]; do mkdir d && cd d; i=$((i+1)); done; echo bottom > f
echo made
"""
# Every place the job aimed at that must stay empty, and the first refused component.
REFUSED = {
    ".git": ".git",
    "sub/.GIT": "sub/.GIT",
    ".git.": ".git.",
    "GIT~1": "GIT~1",
    ZWNJ_GIT: ZWNJ_GIT,
    ".gitmodules": ".gitmodules",
    ".vscode": ".vscode",
    ".envrc": ".envrc",
    "bare/HEAD": "bare/HEAD",
}
WRITTEN = {"result.txt", "tool.sh", "bare/objects/o", "bare/refs/r"}


def wait_final(flashpods, job_id, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = flashpods.api.get_job(job_id)
        if job["status"] not in ("queued", "starting", "running"):
            return job
        time.sleep(0.5)
    raise AssertionError(f"{job_id} not final after {timeout} s")


@pytest.fixture(scope="module")
def hostile_job(host, tmp_path_factory):
    """One job that leaves every hostile shape in its /artifacts (module scope: the
    MCP and CLI tests fetch the same job)."""
    env = {
        "HOME": str(tmp_path_factory.mktemp("home")),
        "FLASHPODS_API_URL": host.api_url,
        "FLASHPODS_API_TOKEN": host.api_token,
        "FLASHPODS_RSYNC_URL": host.rsync_url,
    }
    flashpods = Flashpods(load_settings(env))
    job, _ = flashpods.spawn("worker", command=HOSTILE)
    done = wait_final(flashpods, job["id"])
    assert done["status"] == "succeeded", done
    return job["id"]


def a_checkout(laptop):
    """The laptop's project as a git checkout: .git with hooks and config."""
    project = laptop / "project"
    (project / ".git" / "hooks").mkdir(parents=True)
    (project / ".git" / "config").write_text("[core]\n\tbare = false\n")
    return project


def files_under(root):
    return {str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir()}


def assert_nothing_refused_landed(project):
    assert files_under(project / ".git") == {"config"}
    assert (project / ".git" / "config").read_text() == "[core]\n\tbare = false\n"
    for path in files_under(project):
        assert not any(
            fold(c) in (".git", ".vscode", ".envrc", ".gitmodules") for c in path.split("/")[1:]
        )
    for target in REFUSED:
        if target != ".git":
            assert not os.path.lexists(project / target), target
    assert not (project / "tool.sh").stat().st_mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    # the deep file is written, however deep, without recursion
    assert (project / DEEP_FILE).read_text() == "bottom\n"


def test_mcp_refuses_git_metadata_and_says_so(hostile_job, laptop, laptop_env, open_mcp):
    """Failed before the fix: .git/hooks/pre-commit landed in the project's .git, exec."""
    project = a_checkout(laptop)

    async def main():
        async with open_mcp(laptop_env, roots=[project]) as s:
            aimed = await s.call_tool(
                "get_job_artifacts", {"job_id": hostile_job, "dest": ".git/hooks"}
            )
            return aimed, await s.call_tool(
                "get_job_artifacts", {"job_id": hostile_job, "dest": "."}
            )

    aimed, called = anyio.run(main)
    # an agent told to unpack into the project's .git is refused before any download
    assert aimed.isError and "git metadata" in aimed.content[0].text
    assert not called.isError, called.content[0].text
    result = called.structuredContent
    assert_nothing_refused_landed(project)
    files = {f["path"]: f for f in result["files"]}
    assert set(files) >= WRITTEN and files["tool.sh"]["exec_bit_dropped"] is True
    assert files["result.txt"]["exec_bit_dropped"] is False
    reasons = {s["path"]: s["reason"] for s in result["skipped"]}
    for prefix in REFUSED.values():
        hits = [r for p, r in reasons.items() if p == prefix or p.startswith(prefix + "/")]
        assert hits and all(r.startswith("refused: ") for r in hits), (prefix, reasons)
    assert DEEP_FILE in files
    text = called.content[0].text
    assert "Skipped: " in text and "lost the exec bit" in text


def test_cli_refuses_the_same_and_prints_what(hostile_job, laptop, host):
    project = a_checkout(laptop)
    token = laptop / "api-token"
    token.write_text(host.api_token + "\n")
    env = {
        "HOME": str(laptop),
        "PATH": "/usr/bin:/bin",
        "FLASHPODS_API_URL": host.api_url,
        "FLASHPODS_API_TOKEN_FILE": str(token),
        "FLASHPODS_RSYNC_URL": host.rsync_url,
    }
    done = subprocess.run(
        [FLASHPODS, "artifacts", hostile_job, "."],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    assert_nothing_refused_landed(project)
    assert re.search(r"^skipped \.git/\S+: refused: \.git is git metadata", done.stderr, re.M)
    assert "exec bit in the job, which is never kept" in done.stderr


def laptop_client(host, laptop):
    """The laptop's Flashpods client, pointed at the test host."""
    env = {
        "HOME": str(laptop),
        "FLASHPODS_API_URL": host.api_url,
        "FLASHPODS_API_TOKEN": host.api_token,
        "FLASHPODS_RSYNC_URL": host.rsync_url,
    }
    return Flashpods(load_settings(env))


def test_a_member_past_the_laptops_depth_limit_is_skipped_and_reported(hostile_job, host, laptop):
    """The host never serves more than 256 levels; the laptop holds a compromised host to
    its own limit (lowered here so a real job can reach it) and names what it skipped."""
    flashpods = laptop_client(host, laptop)
    dest = laptop / "deep"
    got = flashpods.fetch_artifacts(hostile_job, dest, limits=UnpackLimits(max_depth=200))
    reasons = {s.path: s.reason for s in got.skipped}
    # the deep file is listed (its 501-character path shortened for the agent's context)
    [deep] = [p for p, r in reasons.items() if "deeper than 200 levels" in r]
    assert deep.startswith("d/d/d/") and deep.endswith("d/d/f") and "..." in deep
    assert not (dest / "d").exists()  # not even the directories above it
    assert (dest / "result.txt").read_text() == "ok\n"


def test_a_flood_of_entries_is_refused_whole(host, laptop):
    """The host serves up to 10,000 entries; the laptop's own cap (lowered here so a
    real job can reach it) refuses the archive with a clear error, writing nothing."""
    project = laptop / "project"
    flashpods = laptop_client(host, laptop)
    flood = "cd /artifacts; i=0; while [ $i -lt 1500 ]; do : > f$i; i=$((i+1)); done"
    job, _ = flashpods.spawn("worker", command=flood)
    assert wait_final(flashpods, job["id"])["status"] == "succeeded"
    before = sorted(os.listdir(project))
    with pytest.raises(FlashpodsError, match="more than 1,000 members") as refused:
        flashpods.fetch_artifacts(job["id"], project / "out", limits=UnpackLimits(max_members=1000))
    assert "nothing was written" in str(refused.value)
    assert sorted(os.listdir(project)) == before  # no dest, no staging directory left
    # the default cap takes the same archive whole
    got = flashpods.fetch_artifacts(job["id"], project / "out")
    assert len([f for f in got.written if not f.path.startswith("_workspace/")]) == 1500
