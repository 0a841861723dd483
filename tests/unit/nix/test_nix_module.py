"""The NixOS module evaluated for real with nixpkgs' lib (lib.evalModules), without
nixpkgs' package set: tests/unit/nix/eval-module.nix evaluates modules/flashpods with
stand-ins for the NixOS options it touches and returns what it generated. These tests
check that against the contracts: design.md's config keys (through the services' own
config parsers), users and hardening, the shared templates as rendered by Nix (nft -c),
and the assertion messages.

Needs a copy of nixpkgs' lib (FLASHPODS_NIXPKGS_LIB, a checkout of
nix-community/nixpkgs.lib); skipped with that message when there is none.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
NIX = shutil.which("nix-instantiate")


def nixpkgs_lib() -> Path | None:
    configured = os.environ.get("FLASHPODS_NIXPKGS_LIB")
    candidates = [Path(configured)] if configured else [Path("/var/tmp/nixpkgs.lib")]
    for base in candidates:
        for lib_dir in (base / "lib", base):
            if (lib_dir / "default.nix").is_file() and (lib_dir / "modules.nix").is_file():
                return lib_dir
    return None


LIB = nixpkgs_lib()
pytestmark = pytest.mark.skipif(
    NIX is None or LIB is None,
    reason="needs a copy of nixpkgs lib, which CI cannot fetch (and nix-instantiate): set "
    "FLASHPODS_NIXPKGS_LIB to a checkout of nix-community/nixpkgs.lib; the parse and "
    "builtins-only checks (test_nix_parse.py, scripts/lib/check-nix.sh) run without it",
)


@pytest.fixture(scope="module")
def evaluated() -> dict:
    result = subprocess.run(
        [
            NIX or "nix-instantiate",
            "--eval",
            "--strict",
            "--json",
            "tests/unit/nix/eval-module.nix",
            "--arg",
            "nixpkgsLib",
            str(LIB),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def valid(evaluated: dict) -> dict:
    return evaluated["valid"]


def test_a_complete_configuration_passes_every_assertion(valid):
    assert valid["failedAssertions"] == []


def test_api_config_is_accepted_by_the_api_itself(valid):
    from flashpods_api import config as api_config

    for generated in (valid["apiConfig"], valid["reaperConfig"]):
        parsed = api_config.from_dict(generated)
        assert parsed.raw["attestation"] == "spire"
        assert parsed.raw["network_mode"] == "pasta"
    # Each unit reads the token from its own credentials directory.
    assert valid["apiConfig"]["token_file"] == "/run/credentials/flashpods-api.service/api-token"
    assert (
        valid["reaperConfig"]["token_file"] == "/run/credentials/flashpods-reaper.service/api-token"
    )


def test_api_config_restricts_peers_to_the_laptop_and_points_at_the_tunnel(valid):
    cfg = valid["apiConfig"]
    assert cfg["allowed_peers"] == ["10.0.0.2"]
    assert cfg["rsync_url"] == "rsync://10.0.0.1:873/uploads"
    assert cfg["podman_url"] == "unix:///run/flashpods/podman/podman.sock"
    assert cfg["spire"]["parent_id"] == "spiffe://flashpods.internal/agent/host"
    assert cfg["spire"]["server_cli"].endswith("/bin/spire-server")
    # The admin socket sits directly in the server's 0750 runtime directory.
    assert cfg["spire"]["server_socket"] == "/run/spire/server/api.sock"
    assert cfg["spire"]["agent_socket"] == "/run/spire/agent/public/api.sock"


def test_token_config_is_accepted_by_the_token_service_itself(valid):
    from flashpods_token import config as token_config

    parsed = token_config.parse_config(valid["tokenConfig"])
    assert parsed.mode == "spire"
    assert parsed.roles == {
        "worker": ["GITHUB_TOKEN"],
        "agent": ["ANTHROPIC_API_KEY", "GITHUB_TOKEN"],
    }
    # Secrets only by path, and only from systemd's credentials directory.
    assert set(parsed.secrets.values()) == {
        "/run/credentials/flashpods-token.service/ANTHROPIC_API_KEY",
        "/run/credentials/flashpods-token.service/GITHUB_TOKEN",
    }


def test_peer_mode_token_config_is_accepted_and_gets_only_ptrace(evaluated):
    from flashpods_token import config as token_config

    peer = evaluated["peerMode"]
    assert token_config.parse_config(peer["tokenConfig"]).mode == "peer"
    assert peer["tokenUnit"] == {
        "AmbientCapabilities": ["CAP_SYS_PTRACE"],
        "CapabilityBoundingSet": ["CAP_SYS_PTRACE"],
    }
    assert peer["spireEnabled"] is False


def test_services_never_run_as_the_container_user(valid):
    units = valid["units"]
    assert units["flashpods-api"]["serviceConfig"]["User"] == "flashpods-api"
    assert units["flashpods-reaper"]["serviceConfig"]["User"] == "flashpods-api"
    assert units["flashpods-token"]["serviceConfig"]["User"] == "flashpods-token"
    # Only Podman itself (and the image loader) run as flashpods.
    as_flashpods = sorted(
        name for name, unit in units.items() if unit["serviceConfig"].get("User") == "flashpods"
    )
    assert as_flashpods == ["flashpods-images", "flashpods-podman"]


@pytest.mark.parametrize("unit", ["flashpods-api", "flashpods-reaper", "flashpods-token"])
def test_services_are_hardened_and_get_secrets_as_credentials(valid, unit):
    service = valid["units"][unit]["serviceConfig"]
    assert service["ProtectSystem"] == "strict"
    assert service["NoNewPrivileges"] is True
    assert service["CapabilityBoundingSet"] == ""
    assert service["IPAddressDeny"] == "any"
    assert service["LoadCredential"], "secrets come through LoadCredential"
    for entry in service["LoadCredential"]:
        name, path = entry.split(":", 1)
        assert not path.startswith("/nix/store"), entry


def test_token_service_can_only_use_unix_sockets(valid):
    service = valid["units"]["flashpods-token"]["serviceConfig"]
    assert service["RestrictAddressFamilies"] == ["AF_UNIX"]
    # It chowns its socket to group flashpods (flashpods_token.server): allowed again
    # after ~@privileged, or the kernel would kill it with SIGSYS.
    assert service["SystemCallFilter"] == ["@system-service", "~@privileged", "@chown"]


def test_api_binds_the_tunnel_address_and_talks_only_to_the_laptop(valid):
    service = valid["units"]["flashpods-api"]["serviceConfig"]
    assert "--bind 10.0.0.1:8080" in service["ExecStart"]
    assert service["IPAddressAllow"] == ["10.0.0.2", "localhost"]
    # No PrivateTmp: uploads live under /tmp and are shared with rsyncd.
    assert service["PrivateTmp"] is False
    assert "/tmp/flashpods/uploads" in service["ReadWritePaths"]


def test_only_wireguard_is_public_and_the_laptop_ports_open_on_the_tunnel(valid):
    assert valid["openFirewallUdp"] == [51820]
    assert sorted(valid["wgTcpPorts"]) == [22, 873, 8080]
    assert valid["sshOpenPublicly"] is False
    assert valid["wireguard"]["ips"] == ["10.0.0.1/24"]
    assert valid["wireguard"]["listenPort"] == 51820
    assert valid["wireguard"]["peers"][0]["allowedIPs"] == ["10.0.0.2/32"]


def test_ssh_can_be_opened_publicly_on_request(evaluated):
    assert evaluated["overrides"]["sshOpenPublicly"] is True


def test_firewall_matches_the_container_uid_and_keeps_other_tables(valid):
    uid = valid["users"]["flashpods"]["uid"]
    assert f"meta skuid {uid} ct state" in valid["firewall"]
    assert 'iifname "wg0" ip saddr 10.0.0.2 tcp dport { 8080, 873 } accept' in valid["firewall"]
    assert "elements = { 203.0.113.53 }" in valid["firewall"]
    assert "elements = { 2001:db8::53 }" in valid["firewall"]
    assert valid["firewallTableFamily"] == "inet"
    assert valid["flushRuleset"] is False


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("nft") or not shutil.which("unshare"),
    reason="nft -c in a fresh network namespace needs root, nft and unshare",
)
@pytest.mark.parametrize("variant", ["etc-file", "nixos-table"])
def test_rendered_ruleset_passes_nft_check(valid, tmp_path, variant):
    if variant == "etc-file":
        ruleset = valid["firewall"]
    else:
        # What networking.nftables.tables makes of the body (nixpkgs' nftables.nix).
        ruleset = (
            "table inet flashpods\ndelete table inet flashpods\n"
            "table inet flashpods {\n" + valid["firewallTableBody"] + "\n}\n"
        )
    path = tmp_path / "ruleset.nft"
    path.write_text(ruleset)
    result = subprocess.run(
        ["unshare", "--net", "nft", "-c", "-f", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_rsyncd_listens_on_the_tunnel_and_allows_only_the_laptop(valid):
    conf = valid["rsyncdConfig"]
    assert "address = 10.0.0.1\n" in conf
    assert "hosts allow = 10.0.0.2\n" in conf
    assert "hosts deny = *\n" in conf
    assert "path = /tmp/flashpods/uploads\n" in conf
    assert "write only = yes" in conf
    assert "@" not in conf.replace("@ERROR", "")


def test_storage_layout_has_the_modes_of_design_md(valid):
    dirs = {path: entry["d"] for path, entry in valid["tmpfiles"].items()}
    assert dirs["/tmp/flashpods/uploads"] == {
        "user": "flashpods-api",
        "group": "flashpods",
        "mode": "2770",
    }
    assert dirs["/tmp/flashpods/uploads/.bases"]["mode"] == "2750"
    assert dirs["/var/lib/flashpods/db"] == {
        "user": "flashpods-api",
        "group": "flashpods-api",
        "mode": "0700",
    }
    for shared in (
        "/var/lib/flashpods/workspaces",
        "/var/lib/flashpods/artifacts",
        "/var/log/flashpods",
    ):
        assert dirs[shared] == {"user": "flashpods-api", "group": "flashpods", "mode": "2770"}
    assert dirs["/run/flashpods"] == {
        "user": "flashpods-token",
        "group": "flashpods",
        "mode": "0750",
    }
    # Warm containers' control dir: the API writes, jobs read; its parent is root's.
    assert dirs["/var/lib/flashpods/control"] == {
        "user": "flashpods-api",
        "group": "flashpods",
        "mode": "2750",
    }
    assert dirs["/var/lib/flashpods"] == {"user": "root", "group": "root", "mode": "0755"}
    # Retention belongs to the reaper: tmpfiles must never age a job's files away.
    assert all("age" not in d for d in dirs.values())


def test_container_user_lingers_with_subids_and_services_have_their_own_users(valid):
    users = valid["users"]
    assert users["flashpods"]["linger"] is True
    assert users["flashpods"]["autoSubUidGidRange"] is True
    assert users["flashpods-api"]["extraGroups"] == ["flashpods", "spire-server"]
    assert users["flashpods-token"]["extraGroups"] == ["flashpods"]
    assert users["spire-agent"]["extraGroups"] == ["flashpods"]


def test_spire_attests_through_the_flashpods_podman_socket(valid):
    docker = valid["spireAgent"]["plugins"]["WorkloadAttestor"]["docker"]["plugin_data"]
    assert docker == {
        "docker_socket_path": "unix:///run/flashpods/podman/podman.sock",
        "use_new_container_locator": True,
    }
    assert valid["spireAgent"]["agent"]["join_token_file"] == "$CREDENTIALS_DIRECTORY/join_token"
    assert valid["spireServer"]["server"]["bind_address"] == "127.0.0.1"
    # A static user whose group (flashpods-api) may use the admin socket.
    assert valid["units"]["spire-server"]["serviceConfig"]["DynamicUser"] is False
    assert valid["units"]["spire-server"]["serviceConfig"]["UMask"] == "0007"


def test_token_service_follows_the_api_instance_label(evaluated, valid):
    assert valid["tokenConfig"]["instance"] == valid["apiConfig"]["instance"]
    # The token service finds a job's container by the API's instance label.
    assert evaluated["overrides"]["tokenConfig"]["instance"] == "blue"


def test_spire_1_15_finds_the_rootless_socket_through_a_uid_named_link(evaluated, valid):
    # 1.15.0 derives a rootless container's Podman socket from the owner's uid; the
    # template points at a link that names the uid and leads to the same socket.
    new = evaluated["spire115"]
    assert new["failedAssertions"] == []
    template = new["docker"]["podman_socket_path_template"]
    assert template == "unix:///run/flashpods/podman-by-uid/%d/podman.sock"
    assert new["tmpfiles"]["/run/flashpods/podman-by-uid/1001"] == {
        "L": {"argument": "/run/flashpods/podman"}
    }
    link_dir = new["tmpfiles"]["/run/flashpods/podman-by-uid"]["d"]
    assert link_dir == {"user": "root", "group": "flashpods", "mode": "0750"}
    # Older SPIRE does not know the key.
    old = valid["spireAgent"]["plugins"]["WorkloadAttestor"]["docker"]["plugin_data"]
    assert "podman_socket_path_template" not in old


def test_settings_override_generated_keys_and_durations_convert(evaluated):
    cfg = evaluated["overrides"]["apiConfig"]
    assert cfg["limits"]["log_bytes"] == 1024
    assert cfg["retention"]["artifacts_s"] == 90
    assert cfg["default_timeout_s"] == 2 * 86400


def test_warm_pool_and_control_dir_reach_the_api_config(valid, evaluated):
    from flashpods_api import config as api_config

    default = api_config.from_dict(valid["apiConfig"])
    assert default.raw["warm_pool"] == {}
    assert str(default.control_dir) == "/var/lib/flashpods/control"
    warm = evaluated["overrides"]["warm"]
    assert warm["failedAssertions"] == []
    parsed = api_config.from_dict(warm["apiConfig"])
    assert parsed.raw["warm_pool"] == {"worker": 2, "sub_agent": 1}
    assert str(parsed.control_dir) == "/srv/flashpods/control"
    assert warm["tmpfiles"]["/srv/flashpods"]["d"]["mode"] == "0755"
    assert warm["tmpfiles"]["/srv/flashpods/control"]["d"]["mode"] == "2750"
    units = valid["units"]
    for unit in ("flashpods-api", "flashpods-reaper"):
        assert "/var/lib/flashpods/control" in units[unit]["serviceConfig"]["ReadWritePaths"]


BROKEN_CASES = {
    # case name -> option every message must name
    "missingEverything": [
        "services.flashpods.wireguard.laptopPublicKey",
        "services.flashpods.wireguard.privateKeyFile",
        "services.flashpods.api.tokenFile",
    ],
    "policyWithoutSecret": ["services.flashpods.token.secrets.<NAME>"],
    "secretInStore": ["outside /nix/store"],
    "badSecretName": ["services.flashpods.token.secrets"],
    "addressWithoutPrefix": ["services.flashpods.wireguard.hostAddress"],
    "oldSpire": ["services.flashpods.spire.package", "1.9.0"],
    "samePorts": ["services.flashpods.rsync.port"],
    "controlInWorkspaces": ["services.flashpods.storage.control", "group flashpods"],
    "badWarmKind": ["services.flashpods.api.warmPool", "worker or sub_agent"],
}


@pytest.mark.parametrize("case", sorted(BROKEN_CASES))
def test_broken_configurations_fail_with_a_message_saying_what_to_set(evaluated, case):
    messages = evaluated["broken"][case]
    assert messages, f"{case} passed every assertion"
    for expected in BROKEN_CASES[case]:
        assert any(expected in m for m in messages), (expected, messages)


def test_a_duration_typo_fails_evaluation(evaluated):
    assert evaluated["broken"]["badDurationFails"] is True


def test_nothing_is_set_up_when_disabled(evaluated):
    assert evaluated["disabled"]["units"] == []


def test_python_packages_map_every_dependency_to_a_nixpkgs_attribute():
    result = subprocess.run(
        [NIX or "nix-instantiate", "--eval", "--strict", "--json"]
        + ["tests/unit/nix/eval-packages.nix", "--arg", "nixpkgsLib", str(LIB)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    packages = json.loads(result.stdout)
    deps = {name: sorted(p["dependencies"]) for name, p in packages.items()}
    # The API's dependencies map one to one (read from its pyproject.toml, which moves).
    api_project = tomllib.loads((REPO / "services/api/pyproject.toml").read_text())["project"]
    assert deps["flashpods-api"] == sorted(
        "python3Packages." + re.split(r"[<>=!~\[ ;]", spec, maxsplit=1)[0].lower()
        for spec in api_project["dependencies"]
    )
    assert "python3Packages.flask" in deps["flashpods-api"]
    # pyjwt[crypto]: the extra is dropped, cryptography is listed on its own.
    # grpcio: the Workload API client (FetchJWTBundles) of spire mode.
    assert deps["flashpods-token"] == [
        "python3Packages.cryptography",
        "python3Packages.grpcio",
        "python3Packages.pyjwt",
    ]
    assert "python3Packages.mcp" in deps["flashpods-mcp"]
    assert packages["flashpods-mcp"]["mainProgram"] == "flashpods-mcp"
    assert packages["flashpods-api"]["mainProgram"] == "flashpods-api"
    for package in packages.values():
        assert package["pyproject"] is True
        assert package["build-system"] == ["python3Packages.setuptools"]


def test_flake_provides_every_output_of_the_spec():
    result = subprocess.run(
        [NIX or "nix-instantiate", "--eval", "--strict", "--json"]
        + ["tests/unit/nix/eval-flake.nix", "--arg", "nixpkgsLib", str(LIB)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    flake = json.loads(result.stdout)
    assert set(flake["outputs"]) >= {
        "nixosModules",
        "packages",
        "nixosConfigurations",
        "checks",
        "apps",
        "devShells",
        "formatter",
    }
    assert flake["nixosModules"] == ["default", "flashpods"]
    assert flake["moduleIsTheDirectory"] is True
    assert set(flake["packages"]) >= {
        "flashpods-api",
        "flashpods-token",
        "flashpods-mcp",
        "flashpods-init",
        "worker-image",
        "agent-image",
    }
    assert flake["apps"] == ["dev-host"]
    assert flake["devShells"] == ["default"]
    checks = set(flake["checks"])
    assert {"unit-tests", "formatting", "example-host"} <= checks
    assert {c for c in checks if c.startswith("vm-")} == {
        "vm-laptop-only-api-and-rsync",
        "vm-job-containers-reach-only-the-internet",
        "vm-spire-attested-secrets",
        "vm-retention-crash-safety-no-leaks",
    }
    assert flake["example"]["system"] == "x86_64-linux"


def test_a_host_without_resolvers_is_warned_that_jobs_get_no_dns(evaluated):
    assert evaluated["warnings"]["valid"] == []
    (warning,) = evaluated["warnings"]["noResolvers"]
    assert "services.flashpods.firewall.jobResolvers" in warning
