"""The command line: running the command, exit codes, umask and HOME,
--help and --version."""

from __future__ import annotations

import os
import stat
import subprocess

from helper_standin import grant
from helper_support import base_env, run_helper


def test_command_gets_its_argv_and_its_exit_status_passes_through(helper, workdir):
    args = ["--", "/bin/sh", "-c", 'printf "[%s]" "$@"; exit 7', "sh", "a b", "", "--", "-x"]

    result = run_helper(helper, args, base_env(workdir))

    assert result.returncode == 7
    assert result.stdout == "[a b][][--][-x]"


def test_command_without_double_dash_and_path_lookup(helper, workdir):
    result = run_helper(helper, ["sh", "-c", "echo $0"], base_env(workdir))

    assert result.returncode == 0, result.stderr
    assert result.stdout == "sh\n"


def test_umask_and_home(helper, workdir):
    home = workdir / "deep" / "home" / "dir"
    env = base_env(workdir, HOME=str(home))

    result = run_helper(helper, ["--", "/bin/sh", "-c", "umask; touch $HOME/f"], env)

    assert result.returncode == 0, result.stderr
    assert result.stdout == "0002\n"
    assert home.is_dir()
    assert stat.S_IMODE((home / "f").stat().st_mode) == 0o664


def test_home_that_cannot_be_made_is_only_a_warning(helper, workdir):
    blocker = workdir / "file"
    blocker.write_text("x")
    env = base_env(workdir, HOME=str(blocker / "home"))

    result = run_helper(helper, ["--", "/bin/true"], env)

    assert result.returncode == 0
    assert "warning: cannot create HOME=" in result.stderr


def test_command_not_found_is_127(helper, workdir):
    result = run_helper(helper, ["--", "no-such-command-xyz"], base_env(workdir))

    assert result.returncode == 127
    assert result.stderr == (
        "flashpods-init: cannot run no-such-command-xyz: command not found (PATH=/usr/bin:/bin)\n"
    )


def test_command_not_executable_is_126(helper, workdir):
    script = workdir / "script"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o644)
    # As the flashpods user: root may execute it anyway on some filesystems.
    result = run_helper(
        os.path.realpath("/usr/bin/setpriv"),
        ["--reuid=1001", "--regid=1001", "--clear-groups", str(helper), "--", str(script)],
        base_env(workdir),
    )

    assert result.returncode == 126
    assert "Permission denied" in result.stderr


def test_no_command_and_unknown_option_are_usage_errors(helper, workdir):
    for args, message in [
        ([], "no command given"),
        (["--"], "no command given"),
        (["--bogus"], "unknown option --bogus"),
    ]:
        result = run_helper(helper, args, base_env(workdir))
        assert result.returncode == 125, args
        assert message in result.stderr


def test_help_and_version(helper, workdir):
    help_result = run_helper(helper, ["--help"], base_env(workdir))
    version = run_helper(helper, ["--version"], base_env(workdir))

    assert help_result.returncode == 0
    assert "usage: flashpods-init [--] COMMAND" in help_result.stdout
    assert "--normalize" in help_result.stdout
    assert version.returncode == 0
    assert version.stdout.startswith("flashpods-init 1 source-sha256 ")
    assert len(version.stdout.split()[-1]) == 64


def test_closed_stdout_is_not_reused_for_the_helpers_own_files(helper, workdir, token_server):
    # Started with stdout closed, the helper must not leave one of its own
    # sockets or pipes there for the command: it puts /dev/null on fd 1.
    server = token_server(grant({"GITHUB_TOKEN": "x"}))
    env = base_env(workdir, FLASHPODS_TOKEN_SOCKET=str(server.path))

    result = subprocess.run(
        [
            "/bin/sh",
            "-c",
            'exec "$0" -- /bin/sh -c \'x=$(readlink /proc/$$/fd/1); echo "$x" >&2\' >&-',
            str(helper),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    assert result.stderr == "/dev/null\n"
