"""The dev host's settings file (`--config`, TOML or JSON): every key reaches the host,
unknown and old keys are errors that name them, flags win over the file (issue 17)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import tomllib
from pathlib import Path

import pytest
import requests
from flashpods_api.config import ConfigError
from flashpods_devhost import cli, settings_file
from flashpods_devhost.pytest_plugin import TEST_BASE
from flashpods_devhost.settings_file import SettingsFileError

REPO = Path(__file__).resolve().parents[3]
FULL = """
root = "/var/tmp/fp-settings-file"
instance = "t-file"
api_host = "127.0.0.1"
api_port = 18080
rsync_host = "127.0.0.1"
rsync_port = 18873
max_concurrent_jobs = 3
firewall = false
laptop_if = "lo"
laptop_addr = "127.0.0.2"
env_file = "/var/tmp/fp-settings-file-client/dev-host.env"
api_workers = 3
queue_limit = 50
default_timeout_s = 600
max_timeout_s = 7200
kill_grace_s = 3
helper_path = "/opt/flashpods/lib/flashpods-init"

[warm_pool]
worker = 2

[sub_agent]
model = "claude-test-model"
base_url = "http://127.0.0.1:9/v1"
command = ["/flashpods/agent/entrypoint", "--effort", "low"]
env = { FLASHPODS_AGENT_MAX_TURNS = "7" }

[images]
worker = "localhost/flashpods-worker:latest"
sub_agent = "localhost/flashpods-agent:latest"
allowed = ["localhost/flashpods-worker:latest", "localhost/flashpods-agent:latest"]

[retention]
logs_s = 60

[limits]
log_bytes = 1048576
job_pids = 256

[secrets]
GITHUB_TOKEN = "@SECRET@"

[roles]
worker = ["GITHUB_TOKEN"]
sub_agent = []

[proxy]
github_scope = { push_branches = ["flashpods/{job_id}/*"], api_write = false }
"""


@pytest.fixture
def clean_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith("FLASHPODS_DEV_") or name in cli.SECRET_ENV:
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str, name: str = "flashpods.toml") -> Path:
    secret = tmp_path / "github"
    secret.write_text("ghp-from-file\n")
    path = tmp_path / name
    path.write_text(text.replace("@SECRET@", str(secret)))
    return path


def test_every_key_of_the_file_reaches_the_host_settings(tmp_path, clean_env):
    # FULL sets every key but these: a key added to settings_file.KEYS lands here.
    in_full = settings_file.check(tomllib.loads(FULL.replace("@SECRET@", "/x")), "FULL")
    # attestation: its own test below (spire mode would build and start SPIRE).
    left_out = {"warm_pool.sub_agent", "retention.artifacts_s", "retention.uploads_s"}
    left_out |= {"attestation"}
    left_out |= {f"limits.{n}" for n in settings_file.API_LIMITS} - {
        "limits.log_bytes",
        "limits.job_pids",
    }
    assert {key.name for key in settings_file.KEYS} - set(in_full) == left_out
    args = cli.parse(["run", "--config", str(write(tmp_path, FULL))])
    settings = cli.settings_from(args)
    assert (settings.instance, settings.api_port, settings.rsync_port) == ("t-file", 18080, 18873)
    assert (settings.max_concurrent_jobs, settings.queue_limit, settings.api_workers) == (3, 50, 3)
    assert settings.firewall is False and settings.firewall_values["laptop_addr"] == "127.0.0.2"
    assert settings.secrets == {"GITHUB_TOKEN": "ghp-from-file"}
    assert settings.roles == {"worker": ["GITHUB_TOKEN"], "sub_agent": []}
    assert args.env_file == Path("/var/tmp/fp-settings-file-client/dev-host.env")
    api = cli.checked_host(args).render_api_config()
    assert api["warm_pool"] == {"worker": 2, "sub_agent": 1}  # the kind not named keeps 1
    assert api["sub_agent"] == {
        "command": ["/flashpods/agent/entrypoint", "--effort", "low"],
        "env": {
            "FLASHPODS_AGENT_MAX_TURNS": "7",
            "ANTHROPIC_MODEL": "claude-test-model",
            "ANTHROPIC_BASE_URL": "http://127.0.0.1:9/v1",
        },
    }
    assert (api["default_timeout_s"], api["max_timeout_s"], api["kill_grace_s"]) == (600, 7200, 3)
    assert api["retention"] == {"artifacts_s": 3600, "logs_s": 60, "uploads_s": 3600}
    assert api["limits"]["log_bytes"] == 1048576 and api["limits"]["job_pids"] == 256
    assert api["allowed_peers"] == ["127.0.0.2"]
    assert any("settings file" in line and "sub_agent.model" in line for line in args.sources)
    assert settings.token_overrides["proxy"]["github_scope"] == {
        "push_branches": ["flashpods/{job_id}/*"],
        "api_write": False,
    }


def test_attestation_comes_from_the_file_and_a_wrong_mode_is_named(tmp_path, clean_env):
    path = tmp_path / "flashpods.json"
    path.write_text(json.dumps({"attestation": "spire"}))
    assert cli.settings_from(cli.parse(["run", "--config", str(path)])).attestation == "spire"
    assert cli.settings_from(cli.parse(["run"])).attestation == "peer"
    path.write_text(json.dumps({"attestation": "docker"}))
    with pytest.raises(ValueError, match="attestation 'docker' must be one of peer, spire"):
        cli.settings_from(cli.parse(["run", "--config", str(path)]))


def test_a_json_file_takes_the_same_keys(tmp_path, clean_env):
    path = tmp_path / "flashpods.json"
    path.write_text(json.dumps({"api_port": 18181, "warm_pool": {"worker": 0, "sub_agent": 0}}))
    args = cli.parse(["run", "--config", str(path)])
    assert args.api_port == 18181
    assert cli.checked_host(args).render_api_config()["warm_pool"] == {"worker": 0, "sub_agent": 0}


def test_a_flag_wins_over_the_file_which_wins_over_the_environment(
    tmp_path, clean_env, monkeypatch
):
    monkeypatch.setenv("FLASHPODS_DEV_API_PORT", "17000")
    monkeypatch.setenv("FLASHPODS_DEV_RSYNC_PORT", "17001")
    monkeypatch.setenv("FLASHPODS_DEV_FIREWALL", "1")  # what scripts/dev-host sets as root
    path = write(tmp_path, "api_port = 18080\nfirewall = false\n")
    args = cli.parse(["run", "--config", str(path), "--api-port", "19090"])
    assert args.api_port == 19090  # flag
    assert args.firewall is False  # file over the environment
    assert args.rsync_port == 17001  # environment
    assert args.instance == "dev"  # built-in default
    assert args.sources[1].endswith("(api_port, firewall)")
    assert args.sources[2] == "command line: --api-port"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("api_prot = 1\n", "unknown key api_prot;"),
        ("colour = 1\n[limits]\nlog_byte = 1\n", "unknown keys colour, limits.log_byte;"),
        ("[warm_pool]\nworkers = 1\n", "unknown key warm_pool.workers;"),
        ("[network]\nmode = 'host'\n", "unknown key network;"),
        ("api_port = '8080'\n", "api_port must be a whole number, not '8080'"),
        ("firewall = 1\n", "firewall must be true or false, not 1"),
        ("api_port = true\n", "api_port must be a whole number, not True"),
        ("api_port = \n", "is not valid TOML"),
        ("warm_pool = 2\n", r"warm_pool must be a table of keys like warm_pool.worker"),
    ],
)
def test_a_wrong_key_or_value_is_an_error_naming_it(tmp_path, clean_env, text, message):
    with pytest.raises(SettingsFileError, match=message):
        cli.parse(["run", "--config", str(write(tmp_path, text))])


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[agent]\nmodel = 'x'\n", "agent uses an old name of the sub-agent; write sub_agent"),
        ("[warm_pool]\nsubagent = 1\n", "write warm_pool.sub_agent"),
        ("[roles]\nagent = []\n", "write roles.sub_agent"),
        ("[images]\nsub-agent = 'x'\n", "write images.sub_agent"),
    ],
)
def test_an_old_sub_agent_spelling_is_refused_naming_the_new(tmp_path, clean_env, text, named):
    with pytest.raises(SettingsFileError, match=named):
        cli.parse(["run", "--config", str(write(tmp_path, text))])


def test_a_value_the_api_refuses_fails_before_anything_starts(tmp_path, clean_env):
    args = cli.parse(["run", "--config", str(write(tmp_path, "[limits]\njob_pids = 1\n"))])
    with pytest.raises(ConfigError, match="limits.job_pids must be from"):
        cli.checked_host(args)


def test_a_secret_file_that_cannot_be_read_is_named(tmp_path, clean_env):
    path = write(tmp_path, "[secrets]\nGITHUB_TOKEN = '/nonexistent/github'\n")
    with pytest.raises(SettingsFileError, match="secrets.GITHUB_TOKEN: cannot read"):
        cli.settings_from(cli.parse(["run", "--config", str(path)]))


def test_the_console_script_says_what_is_wrong_and_exits_1(tmp_path, clean_env, capsys):
    assert cli.main(["run", "--config", str(write(tmp_path, "api_prot = 1\n"))]) == 1
    assert "unknown key api_prot" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_scripts_dev_host_runs_with_the_file_and_check_sees_it(tmp_path):
    unique = secrets.token_hex(4)
    root = TEST_BASE / f"file-{unique}"
    api_port, rsync_port = _free_port(), _free_port()
    config = tmp_path / "flashpods.toml"
    config.write_text(
        f'root = "{root}"\ninstance = "t-file-{unique}"\n'
        f"api_port = {api_port}\nrsync_port = {rsync_port}\n"
        f'env_file = "{tmp_path}/client/dev-host.env"\n'
        "firewall = false\nmax_concurrent_jobs = 3\n"
        '[warm_pool]\nworker = 2\nsub_agent = 0\n[sub_agent]\nmodel = "claude-test"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHPODS_DEV_")}

    def dev_host(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(REPO / "scripts/dev-host"), *args, "--config", str(config)],
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )

    try:
        started = dev_host("--detach", "--no-install")
        assert started.returncode == 0, started.stdout + started.stderr
        log = (root / "log" / "devhost.log").read_text()
        assert f"settings file: {config} (api_port, env_file, firewall, instance" in log
        assert "defaults: " in log and "flashpods_api/defaults.json" in log
        api_config = json.loads((root / "etc" / "api.json").read_text())
        assert api_config["max_concurrent_jobs"] == 3
        assert api_config["warm_pool"] == {"worker": 2, "sub_agent": 0}
        assert api_config["sub_agent"]["env"]["ANTHROPIC_MODEL"] == "claude-test"
        health = requests.get(f"http://127.0.0.1:{api_port}/healthz", timeout=10).json()
        assert health["checks"]["warm_pool"]["target"] == {"worker": 2}  # 0: no pool

        checked = dev_host("--check")
        running = [line for line in checked.stdout.splitlines() if line.startswith("ok")]
        assert any(f"api            http://127.0.0.1:{api_port}" in line for line in running)
        assert any("token service" in line for line in running), checked.stdout
    finally:
        stopped = dev_host("stop")
    assert stopped.returncode == 0, stopped.stderr
    after = dev_host("--check")
    assert f"MISSING dev host       none started on {root}" in after.stdout
    shutil.rmtree(root, ignore_errors=True)
