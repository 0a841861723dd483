"""The configs the launcher writes carry exactly the keys of docs/design.md."""

from __future__ import annotations

from pathlib import Path

import pytest
from flashpods_devhost import configs
from flashpods_devhost.host import HostSettings
from flashpods_devhost.layout import Paths

PATHS = Paths(Path("/var/tmp/flashpods-test/cfg"))
API_KEYS = {
    "instance", "token_file", "db_path", "storage", "podman_url", "rsync_url",
    "allowed_peers", "max_concurrent_jobs", "queue_limit", "default_timeout_s",
    "max_timeout_s", "kill_grace_s", "images", "sub_agent", "network_mode", "helper_path",
    "token_socket", "attestation", "spire", "retention", "limits", "reaper", "warm_pool",
}  # fmt: skip
TOKEN_KEYS = {
    "socket", "socket_group", "mode", "trust_domain", "podman_url", "instance", "roles",
    "secrets", "audit_log", "spire", "env_delivery",
}  # fmt: skip


def _api(**overrides):
    return configs.api_config(
        paths=PATHS,
        instance="t-cfg",
        rsync_url="rsync://127.0.0.1:1/uploads",
        max_concurrent_jobs=2,
        queue_limit=10,
        retention={"logs_s": 5},
        overrides=overrides,
    )


def test_api_config_has_the_design_keys_and_paths_under_the_root() -> None:
    config = _api()
    assert set(config) == API_KEYS
    assert config["db_path"] == str(PATHS.root / "db" / "flashpods.db")
    assert config["podman_url"] == f"unix://{PATHS.root}/run/podman/podman.sock"
    assert set(config["storage"]) == {
        "uploads",
        "workspaces",
        "artifacts",
        "logs",
        "control",
        "usage",
        "budgets",
    }
    # Set only when the proxy meters (host.py)
    assert config["storage"]["usage"] is None and config["storage"]["budgets"] is None
    # The warm pool's control root: beside the job-writable dirs, never inside them.
    assert config["storage"]["control"] == str(PATHS.root / "control")
    # Retention given in the settings replaces only the keys it names.
    assert config["retention"] == {"artifacts_s": 3600, "logs_s": 5, "uploads_s": 3600}


def test_overrides_merge_nested_keys_one_by_one() -> None:
    config = _api(limits={"log_bytes": 10}, allowed_peers=["10.0.0.2"])
    assert config["limits"]["log_bytes"] == 10
    assert config["limits"]["artifact_bytes"] == 1024**3  # untouched sibling
    assert config["allowed_peers"] == ["10.0.0.2"]


def test_token_config_has_the_design_keys() -> None:
    config = configs.token_config(
        paths=PATHS,
        instance="t-cfg",
        socket_group="flashpods",
        roles={"worker": ["GITHUB_TOKEN"], "sub_agent": []},
        secret_files={"GITHUB_TOKEN": "/x/GITHUB_TOKEN"},
        overrides={},
    )
    assert set(config) == TOKEN_KEYS
    assert config["mode"] == "peer"
    # No proxy block: the dev host opts each secret into environment delivery itself.
    assert config["env_delivery"] == ["GITHUB_TOKEN"]


def test_the_proxy_reads_job_budgets_where_the_dev_host_makes_them() -> None:
    config = configs.token_config(
        paths=PATHS,
        instance="t-cfg",
        socket_group="flashpods",
        roles={"worker": ["GITHUB_TOKEN"], "sub_agent": []},
        secret_files={"GITHUB_TOKEN": "/x/GITHUB_TOKEN"},
        overrides={"proxy": {"rules": {"GITHUB_TOKEN": ["github.com"]}}},
    )
    assert config["proxy"]["budget_dir"] == str(PATHS.budgets) == str(PATHS.root / "state/budgets")
    assert config["proxy"]["usage_dir"] == str(PATHS.usage)


def test_a_role_granting_an_unknown_secret_is_refused_with_the_name() -> None:
    with pytest.raises(ValueError, match="GITHUB_TOKEN"):
        configs.token_config(
            paths=PATHS,
            instance="t-cfg",
            socket_group="flashpods",
            roles={"worker": ["GITHUB_TOKEN"]},
            secret_files={},
            overrides={},
        )


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("instance", "bad/name", "instance"),  # becomes a label value and a path part
        ("instance", "", "instance"),
        ("root", "relative/root", "absolute"),
    ],
)
def test_bad_settings_say_what_to_change(field: str, value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HostSettings(**{field: value})


def test_an_old_sub_agent_role_is_refused_naming_the_new() -> None:
    with pytest.raises(ValueError, match="roles.agent is an old name .* write roles.sub_agent"):
        configs.token_config(
            paths=PATHS,
            instance="t-cfg",
            socket_group="flashpods",
            roles={"worker": [], "agent": []},
            secret_files={},
            overrides={},
        )
