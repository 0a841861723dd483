"""One source for the host settings: flashpods_api/defaults.json (issue 17).

The API loads the file, the dev host overlays it and the NixOS module renders it with
lib.importJSON. Each platform may change only the keys listed here (where things live,
how the host is reached, what its Podman runs); on every other key it must agree with
the file. A key a platform changes that is not listed fails with its name: either the
platform drifted (fix it) or the key is a platform's business (list it here, with why).
"""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
from flashpods_api import config as api_settings
from flashpods_devhost import cli

from .nixlib import NIX, NIX_LIB, REPO, SKIP_REASON, evaluate_module

STORAGE = {f"storage.{key}" for key in ("uploads", "workspaces", "artifacts", "logs", "control")}
# Paths under the dev host's root, its loopback URLs, the laptop address given on the
# command line; network_mode stays slirp4netns (Debian 12's Podman 4.3).
DEVHOST_MAY_CHANGE = {
    "instance", "token_file", "db_path", *STORAGE, "podman_url", "rsync_url",
    "allowed_peers", "token_socket",
}  # fmt: skip
# The host's name, its systemd credential, its storage options, the tunnel address,
# the init package's store path, Podman 5's pasta, the module's own SPIRE sockets,
# the usage and budget files of the credential proxy unit it runs, and that proxy's
# host budget (the most a job may ask for: one option feeds both services).
NIXOS_MAY_CHANGE = {
    "instance", "token_file", "db_path", *STORAGE, "podman_url", "rsync_url",
    "allowed_peers", "network_mode", "helper_path", "token_socket",
    "spire.server_socket", "spire.agent_socket", "storage.usage", "storage.budgets",
    "limits.job_budget_tokens",
}  # fmt: skip
# With services.flashpods.spire.enable: the mode and the SPIRE package's CLI.
NIXOS_SPIRE_MAY_CHANGE = NIXOS_MAY_CHANGE | {"attestation", "spire.server_cli"}

needs_nix = pytest.mark.skipif(NIX is None or NIX_LIB is None, reason=SKIP_REASON)


def flatten(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists and empty objects are values of their own."""
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def changed_keys(platform: dict[str, Any]) -> set[str]:
    """Keys whose value differs from the packaged defaults (or exist on one side only)."""
    ours, theirs = flatten(api_settings.DEFAULTS), flatten(platform)
    missing = object()
    return {
        k for k in ours.keys() | theirs.keys() if ours.get(k, missing) != theirs.get(k, missing)
    }


def assert_changes_only(platform: dict[str, Any], allowed: set[str], name: str) -> None:
    extra = sorted(changed_keys(platform) - allowed)
    assert not extra, (
        f"{name} changes {', '.join(extra)} of flashpods_api/defaults.json: change the "
        "default in that file (all platforms), or list the key as this platform's own "
        "in tests/unit/nix/test_settings_platforms.py with the reason"
    )
    # What a platform renders is a configuration the API accepts as it is.
    api_settings.from_dict(platform)


def test_the_api_loads_its_defaults_from_the_packaged_file():
    import json
    from importlib import resources

    packaged = json.loads(resources.files("flashpods_api").joinpath("defaults.json").read_text())
    assert packaged == api_settings.DEFAULTS
    assert api_settings.from_dict({}).raw == packaged


def test_the_check_names_a_key_a_platform_should_not_change():
    drifted = {**api_settings.DEFAULTS, "queue_limit": 7}
    drifted["spire"] = {**drifted["spire"], "server_socket": "/run/spire/server/api.sock"}
    with pytest.raises(AssertionError, match="queue_limit, spire.server_socket"):
        assert_changes_only(drifted, DEVHOST_MAY_CHANGE, "the dev host")


def test_the_dev_host_changes_only_its_platform_keys():
    host_config = cli_host().render_api_config()
    assert_changes_only(host_config, DEVHOST_MAY_CHANGE, "the dev host")
    assert host_config["network_mode"] == "slirp4netns"
    # The warm pool is on by default: the first spawn of each kind takes the warm path.
    assert (
        host_config["warm_pool"]
        == api_settings.DEFAULTS["warm_pool"]
        == {
            "worker": 1,
            "sub_agent": 1,
        }
    )


def cli_host():
    from flashpods_devhost.host import DevHost

    return DevHost(cli.settings_from(cli.parse(["run", "--root", "/var/tmp/fp-settings"])))


@pytest.fixture(scope="module")
def nixos() -> dict:
    return evaluate_module()


@needs_nix
def test_nixos_changes_only_its_platform_keys(nixos):
    rendered = nixos["valid"]["apiConfig"]
    assert_changes_only(rendered, NIXOS_MAY_CHANGE, "the NixOS module")
    assert rendered["network_mode"] == "pasta"
    assert rendered["warm_pool"] == {"worker": 1, "sub_agent": 1}
    assert_changes_only(nixos["example"]["apiConfig"], NIXOS_MAY_CHANGE, "modules/hosts/example")


@needs_nix
def test_nixos_with_spire_changes_only_its_platform_keys(nixos):
    rendered = nixos["spire"]["1.15.0"]["apiConfig"]
    assert_changes_only(rendered, NIXOS_SPIRE_MAY_CHANGE, "the NixOS module with SPIRE")
    assert rendered["attestation"] == "spire"
    assert rendered["spire"]["server_cli"].endswith("/bin/spire-server")


def test_the_defaults_file_is_in_the_flake_source_the_module_reads():
    # A flake sees only files git tracks; lib.nix imports this path relative to itself.
    lib_nix = (REPO / "modules" / "flashpods" / "lib.nix").read_text()
    assert "lib.importJSON ../../services/api/flashpods_api/defaults.json" in lib_nix
    tracked = subprocess.run(
        ["git", "ls-files", "--error-unmatch", "services/api/flashpods_api/defaults.json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert tracked.returncode == 0, tracked.stderr
