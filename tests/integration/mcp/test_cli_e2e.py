"""The `flashpods` command-line client against a real dev host, configured the way the
dev host leaves a laptop: only ~/.config/flashpods/dev-host.env, no variables."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.root]  # a real dev host needs root
FLASHPODS = str(Path(sys.executable).parent / "flashpods")


@pytest.fixture
def cli(host, laptop):
    config = laptop / ".config" / "flashpods"
    config.mkdir(parents=True)
    (config / "api-token").write_text(host.api_token + "\n")
    (config / "dev-host.env").write_text(
        f"FLASHPODS_API_URL={host.api_url}\n"
        "FLASHPODS_API_TOKEN_FILE=api-token\n"
        f"FLASHPODS_RSYNC_URL={host.rsync_url}\n"
    )
    env = {"HOME": str(laptop), "PATH": "/usr/bin:/bin"}

    def run(*args, cwd=laptop / "project", timeout=180):
        return subprocess.run(
            [FLASHPODS, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
        )

    return run


def test_run_follows_and_exits_with_the_jobs_code(cli, laptop):
    done = cli("run", "--", "cat data.txt; echo out > /artifacts/r.txt; exit 3")
    assert done.returncode == 3, done.stderr
    assert "hello from the laptop" in done.stdout
    job_id = re.search(r"started (job_[a-z0-9]{12})", done.stderr).group(1)

    logs = cli("logs", job_id)
    assert logs.returncode == 0 and logs.stdout == "hello from the laptop\n"
    status = cli("status", job_id)
    assert "failed" in status.stdout and "exit_code" in status.stdout
    jobs = cli("jobs", "--limit", "5")
    assert job_id in jobs.stdout
    arts = cli("artifacts", job_id, "got")
    assert arts.returncode == 0, arts.stderr
    assert (laptop / "project" / "got" / "r.txt").read_text() == "out\n"


def test_logs_follow_and_kill(cli):
    run = cli("run", "--no-upload", "--timeout", "2", "--", "echo begin; sleep 60")
    # the host's timeout stops it: run exits like timeout(1) does
    assert run.returncode == 124, run.stderr
    assert "begin" in run.stdout
    job_id = re.search(r"started (job_[a-z0-9]{12})", run.stderr).group(1)
    follow = cli("logs", "-f", job_id)
    assert follow.stdout == "begin\n"
    killed = cli("kill", job_id)  # killing a final job is fine (idempotent)
    assert killed.returncode == 0 and "timed_out" in killed.stdout


def test_cli_errors_are_one_line(cli):
    bad = cli("status", "job_aaaaaaaaaaaa")
    assert bad.returncode == 1
    assert bad.stderr.startswith("flashpods: Unknown job job_aaaaaaaaaaaa")
    refused = cli("run", "--path", "../.ssh", "--", "true")
    assert refused.returncode == 1 and "never reads or writes" in refused.stderr
