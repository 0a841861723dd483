"""The NixOS module evaluated for real with nixpkgs' lib (lib.evalModules), without
nixpkgs' package set: tests/unit/nix/eval-module.nix evaluates modules/flashpods with
typed stubs of exactly the NixOS options it sets or reads (tests/unit/nix/stubs.nix,
each with nixpkgs' type and default) and returns what it generated. These tests check
that against the contracts: design.md's config keys (through the services' own config
parsers), users and hardening, the shared templates as rendered by Nix (nft -c), the
SPIRE units and their version gates, and the assertion messages. An option the module
uses that nixpkgs (as stubbed) does not have fails the evaluation, by name.

Needs nixpkgs' lib (tests/unit/nix/nixlib.py); skipped with that reason without it.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
import tomllib

import pytest

from .nixlib import NIX, NIX_LIB, REPO, SKIP_REASON, evaluate_module, nix_eval

LIB = NIX_LIB
pytestmark = pytest.mark.skipif(NIX is None or LIB is None, reason=SKIP_REASON)


@pytest.fixture(scope="module")
def evaluated() -> dict:
    return evaluate_module()


@pytest.fixture(scope="module")
def valid(evaluated: dict) -> dict:
    return evaluated["valid"]


def test_a_complete_configuration_passes_every_assertion(valid):
    assert valid["failedAssertions"] == []
    # Every value went through its option's type, every definition through the
    # check that its option exists.
    assert valid["everythingChecked"] is True


def test_the_example_host_evaluates_on_the_typed_stubs_with_no_failed_assertion(evaluated):
    # modules/hosts/example.nix as it is (nixosConfigurations.example), with
    # nixpkgs' real lib: what `nixos-rebuild` would evaluate, minus the builds.
    example = evaluated["example"]
    assert example["failedAssertions"] == []
    assert example["everythingChecked"] is True
    assert example["warnings"] == []
    assert example["apiConfig"]["attestation"] == "peer"


def test_api_config_is_accepted_by_the_api_itself(valid):
    from flashpods_api import config as api_config

    for generated in (valid["apiConfig"], valid["reaperConfig"]):
        parsed = api_config.from_dict(generated)
        # Peer attestation unless SPIRE is asked for (25.11's SPIRE cannot attest
        # rootless jobs).
        assert parsed.raw["attestation"] == "peer"
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


def test_token_config_is_accepted_by_the_token_service_itself(valid):
    from flashpods_token import config as token_config

    parsed = token_config.parse_config(valid["tokenConfig"])
    assert parsed.mode == "peer"
    assert parsed.roles == {
        "worker": ["GITHUB_TOKEN"],
        "sub_agent": ["ANTHROPIC_API_KEY", "GITHUB_TOKEN"],
    }
    # Secrets only by path, and only from systemd's credentials directory.
    assert set(parsed.secrets.values()) == {
        "/run/credentials/flashpods-token.service/ANTHROPIC_API_KEY",
        "/run/credentials/flashpods-token.service/GITHUB_TOKEN",
        "/run/credentials/flashpods-token.service/NPM_TOKEN",
    }
    # Ruled secrets are handed out as placeholders; only the opted-in one as a value.
    assert parsed.env_delivery == ["NPM_TOKEN"]
    assert set(parsed.proxy.rules) == {"ANTHROPIC_API_KEY", "GITHUB_TOKEN"}
    # The token service loads only what it hands out as a value.
    service = valid["units"]["flashpods-token"]["serviceConfig"]
    assert service["LoadCredential"] == ["NPM_TOKEN:/var/lib/flashpods-secrets/npm"]


def test_the_proxy_config_is_accepted_by_the_proxy_itself(valid):
    from flashpods_token import config as token_config

    parsed = token_config.parse_config(valid["proxyConfig"])
    proxy = parsed.proxy
    assert parsed.mode == "peer"
    # Beside token.sock, in the directory every job mounts at /run/flashpods.
    assert proxy.socket == "/run/flashpods/token/proxy.sock"
    assert os.path.dirname(proxy.socket) == os.path.dirname(parsed.socket)
    # The CA from the proxy unit's own credentials ($CREDENTIALS_DIRECTORY), no ca_dir.
    creds = "/run/credentials/flashpods-proxy.service"
    assert proxy.ca_dir is None
    assert (proxy.ca_key_file, proxy.ca_cert_file) == (f"{creds}/ca-key.pem", f"{creds}/ca.pem")
    assert proxy.rules == {
        "ANTHROPIC_API_KEY": ["api.anthropic.com"],
        "GITHUB_TOKEN": ["github.com", "api.github.com"],
    }
    assert proxy.budget_tokens == 1000000
    assert proxy.upstream_ca_file is None
    # The ruleset this host loads: the proxy refuses what the firewall refuses jobs.
    assert proxy.firewall_template == "/etc/flashpods/firewall.nft"
    # The secrets it injects come from its own credentials directory.
    assert parsed.secrets["GITHUB_TOKEN"] == f"{creds}/GITHUB_TOKEN"
    # The same keys as the token service's file, but for the secrets' paths.
    shared = {k: v for k, v in valid["tokenConfig"].items() if k != "secrets"}
    assert {k: v for k, v in valid["proxyConfig"].items() if k != "secrets"} == shared
    # The API shows the usage the proxy records.
    assert valid["apiConfig"]["storage"]["usage"] == proxy.usage_dir == "/var/lib/flashpods/usage"
    # Per-job budgets: the API writes them where the proxy reads them, and takes the
    # proxy's host budget as the most a job may ask for.
    api = valid["apiConfig"]
    assert api["storage"]["budgets"] == proxy.budget_dir == "/var/lib/flashpods/budgets"
    assert api["limits"]["job_budget_tokens"] == proxy.budget_tokens
    # An address routed into the tunnel is the laptop's: refused, as the firewall does (V18).
    assert proxy.refused_interfaces == ["wg0"]
    # ... and the API's unit may write that directory.
    assert (
        "/var/lib/flashpods/budgets"
        in valid["units"]["flashpods-api"]["serviceConfig"]["ReadWritePaths"]
    )


def test_the_proxy_unit_is_hardened_like_the_token_service(valid):
    units = valid["units"]
    proxy, token = units["flashpods-proxy"], units["flashpods-token"]
    service = proxy["serviceConfig"]
    assert service["ExecStart"].endswith("-flashpods-token/bin/flashpods-proxy")
    assert (service["User"], service["Group"]) == ("flashpods-token", "flashpods-token")
    for key in (
        "ProtectSystem",
        "NoNewPrivileges",
        "CapabilityBoundingSet",
        "AmbientCapabilities",
        "ProtectProc",
        "SystemCallFilter",
        "ProtectHome",
        "ProtectKernelTunables",
        "RestrictNamespaces",
        "RestrictSUIDSGID",
        "UMask",
        "PrivateTmp",
    ):
        assert service[key] == token["serviceConfig"][key], key
    assert service["AmbientCapabilities"] == ["CAP_SYS_PTRACE"]
    assert service["ProtectSystem"] == "strict"
    # Writes only its socket's directory and the usage files.
    assert service["ReadWritePaths"] == ["/run/flashpods/token", "/var/lib/flashpods/usage"]
    # Upstream over IP, netlink for the route lookup of refused_interfaces (it refuses
    # everything when the lookup fails), and a descriptor budget for 512 connections.
    assert service["RestrictAddressFamilies"] == ["AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"]
    assert service["LimitNOFILE"] >= 2 * 512
    assert service["Restart"] == "always"
    # After (and with) the token service and the CA's one-shot.
    assert "flashpods-token.service" in proxy["after"]
    assert "flashpods-token.service" in proxy["wants"]
    assert proxy["requires"] == ["flashpods-proxy-ca.service"]
    assert "flashpods-proxy-ca.service" in proxy["after"]
    assert proxy["wantedBy"] == ["multi-user.target"]
    # A changed config or ruleset restarts it.
    assert valid["units"]["flashpods-proxy"]["restartTriggers"][0] == json.dumps(
        valid["proxyConfig"], separators=(",", ":"), sort_keys=True
    )


def test_the_proxy_gets_its_ca_and_ruled_secrets_as_credentials_and_nothing_else(valid):
    service = valid["units"]["flashpods-proxy"]["serviceConfig"]
    assert service["LoadCredential"] == [
        "ca.pem:/var/lib/flashpods/proxy-ca/ca.pem",
        "ca-key.pem:/var/lib/flashpods/proxy-ca/ca-key.pem",
        "ANTHROPIC_API_KEY:/var/lib/flashpods-secrets/anthropic",
        "GITHUB_TOKEN:/var/lib/flashpods-secrets/github",
    ]
    assert "LoadCredentialEncrypted" not in service
    # The credential names are the file names the proxy config reads.
    names = {entry.split(":", 1)[0] for entry in service["LoadCredential"]}
    proxy = valid["proxyConfig"]["proxy"]
    assert {os.path.basename(proxy[key]) for key in ("ca_key_file", "ca_cert_file")} <= names


def test_the_ca_one_shot_makes_the_key_as_root_without_network(valid):
    unit = valid["units"]["flashpods-proxy-ca"]
    service = unit["serviceConfig"]
    assert service["ExecStart"].split()[1:] == [
        "make-ca",
        "/var/lib/flashpods/proxy-ca/ca-key.pem",
        "/var/lib/flashpods/proxy-ca/ca.pem",
    ]
    assert service["ExecStart"].split()[0].endswith("/bin/flashpods-proxy")
    assert (service["Type"], service["RemainAfterExit"]) == ("oneshot", True)
    assert "User" not in service  # root, but with no capability at all
    assert service["CapabilityBoundingSet"] == ""
    assert service["UMask"] == "0077"
    assert service["PrivateNetwork"] is True
    assert service["IPAddressDeny"] == "any"
    assert service["ReadWritePaths"] == ["/var/lib/flashpods/proxy-ca"]
    assert unit["wantedBy"] == []  # pulled in by the proxy only
    # Its directory is root's alone; the usage directory is the proxy's, read by the API.
    entries = {path: entry["d"] for path, entry in valid["tmpfiles"].items()}
    ca_dir = entries["/var/lib/flashpods/proxy-ca"]
    assert (ca_dir["user"], ca_dir["group"], ca_dir["mode"]) == ("root", "root", "0700")
    usage = entries["/var/lib/flashpods/usage"]
    assert (usage["user"], usage["group"], usage["mode"]) == (
        "flashpods-token",
        "flashpods",
        "0750",
    )


def test_the_kernel_holds_the_proxy_to_the_jobs_forbidden_ranges(valid):
    from flashpods_token.egress import nonpublic_networks

    service = valid["units"]["flashpods-proxy"]["serviceConfig"]
    denied = [ipaddress.ip_network(n) for n in service["IPAddressDeny"]]
    # Exactly the sets the proxy's own check reads from the rendered ruleset.
    assert denied == nonpublic_networks(valid["firewall"])
    assert ipaddress.ip_network("169.254.0.0/16") in denied
    # Only the resolvers jobs may query too are let through.
    assert service["IPAddressAllow"] == ["203.0.113.53", "2001:db8::53"]


def test_github_scoping_reaches_the_proxy_as_it_parses_it(evaluated):
    from flashpods_token import config as token_config

    facts = evaluated["proxy"]["githubScope"]
    assert facts["failedAssertions"] == []
    scope = facts["proxyConfig"]["proxy"]["github_scope"]
    assert scope == {
        "secret": "GITHUB_TOKEN",
        "push_branches": ["flashpods/{job_id}/*"],
        "api_write": False,
    }
    parsed = token_config.parse_config(facts["proxyConfig"]).proxy
    assert parsed is not None and parsed.github_scope is not None
    # Unset, the block says so and the proxy applies no scope.
    assert evaluated["proxy"]["encryptedKey"]["proxyConfig"]["proxy"]["github_scope"] is None


def test_an_encrypted_operator_key_is_loaded_encrypted(evaluated):
    facts = evaluated["proxy"]["encryptedKey"]
    assert facts["failedAssertions"] == []
    assert facts["everythingChecked"] is True
    service = facts["units"]["flashpods-proxy"]["serviceConfig"]
    assert service["LoadCredentialEncrypted"] == [
        "ca-key.pem:/var/lib/flashpods-secrets/proxy-ca-key.cred"
    ]
    assert service["LoadCredential"][0] == "ca.pem:/var/lib/flashpods-secrets/proxy-ca.pem"
    assert not [e for e in service["LoadCredential"] if e.startswith("ca-key.pem:")]
    # The operator supplies the CA: no one-shot, no root-only directory made.
    assert set(facts["units"]) == {"flashpods-proxy"}
    assert facts["units"]["flashpods-proxy"]["requires"] == []
    assert "/var/lib/flashpods-secrets" not in facts["tmpfiles"]


def test_with_the_proxy_off_secrets_go_the_old_way_only_when_named(evaluated):
    from flashpods_token import config as token_config

    facts = evaluated["proxy"]["disabled"]
    assert facts["failedAssertions"] == []
    assert facts["units"] == {}
    parsed = token_config.parse_config(facts["tokenConfig"])
    assert parsed.proxy is None
    assert parsed.env_delivery == ["ANTHROPIC_API_KEY", "GITHUB_TOKEN", "NPM_TOKEN"]
    assert facts["apiConfig"]["storage"]["usage"] is None
    assert "/var/lib/flashpods/usage" not in facts["tmpfiles"]


def test_the_reaper_sees_job_processes_to_hold_them_to_their_limits(valid):
    # Rootless on cgroup v1 the kernel ignores memory/pids limits: the reaper polls
    # the flashpods uid's processes in /proc, which ProtectProc=invisible would hide.
    reaper = valid["units"]["flashpods-reaper"]["serviceConfig"]
    assert reaper["ProtectProc"] == "default"
    assert reaper["LimitNOFILE"] == 4096
    # The API itself does not need them.
    assert valid["units"]["flashpods-api"]["serviceConfig"]["ProtectProc"] == "invisible"


def test_peer_attestation_is_the_default_and_the_token_service_gets_only_ptrace(valid):
    service = valid["units"]["flashpods-token"]["serviceConfig"]
    assert service["AmbientCapabilities"] == ["CAP_SYS_PTRACE"]
    assert service["CapabilityBoundingSet"] == ["CAP_SYS_PTRACE"]
    # No SPIRE unit, user or tmpfiles entry unless SPIRE is enabled.
    assert not [name for name in valid["units"] if "spire" in name]
    assert not [name for name in valid["users"] if "spire" in name]
    assert "11-flashpods-spire" not in valid["tmpfilesFiles"]


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


@pytest.mark.parametrize(
    "unit", ["flashpods-api", "flashpods-reaper", "flashpods-token", "flashpods-proxy"]
)
def test_services_are_hardened_and_get_secrets_as_credentials(valid, unit):
    service = valid["units"][unit]["serviceConfig"]
    assert service["ProtectSystem"] == "strict"
    assert service["NoNewPrivileges"] is True
    if unit not in ("flashpods-token", "flashpods-proxy"):  # peer attestation: CAP_SYS_PTRACE
        assert service["CapabilityBoundingSet"] == ""
    if unit != "flashpods-proxy":  # it dials the internet: the forbidden ranges only, above
        assert service["IPAddressDeny"] == "any"
    assert service["LoadCredential"], "secrets come through LoadCredential"
    for entry in service["LoadCredential"]:
        name, path = entry.split(":", 1)
        assert not path.startswith("/nix/store"), entry


def test_token_service_can_only_use_unix_sockets(valid):
    service = valid["units"]["flashpods-token"]["serviceConfig"]
    assert service["RestrictAddressFamilies"] == ["AF_UNIX"]
    # Peer attestation (the default) reads other processes' namespaces, which
    # ~@privileged would forbid; in spire mode it is ["@system-service",
    # "~@privileged", "@chown"] (services.nix).
    assert service["SystemCallFilter"] == ["@system-service"]


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
    first, count = 1879048192, 65536
    assert "meta skuid @job_uids ct state" in valid["firewall"]
    assert f"elements = {{ {uid}, {first}-{first + count - 1} }}" in valid["firewall"]
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
    # nixpkgs' tmpfiles entries also carry type, age and argument (defaults "-", "").
    entries = {path: entry["d"] for path, entry in valid["tmpfiles"].items()}
    dirs = {path: {k: d[k] for k in ("user", "group", "mode")} for path, d in entries.items()}
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
    # The token socket's own directory (jobs mount it), and its parent, root's.
    assert dirs["/run/flashpods/token"] == {
        "user": "flashpods-token",
        "group": "flashpods",
        "mode": "0750",
    }
    assert dirs["/run/flashpods"] == {"user": "root", "group": "root", "mode": "0755"}
    # Warm containers' control dir: the API writes, jobs read; its parent is root's.
    assert dirs["/var/lib/flashpods/control"] == {
        "user": "flashpods-api",
        "group": "flashpods",
        "mode": "2750",
    }
    assert dirs["/var/lib/flashpods"] == {"user": "root", "group": "root", "mode": "0755"}
    # Retention belongs to the reaper: tmpfiles must never age a job's files away.
    assert all(d["age"] == "-" for d in entries.values())


def test_container_user_lingers_with_subids_and_services_have_their_own_users(valid):
    users = valid["users"]
    assert users["flashpods"]["linger"] is True
    # An explicit range (the firewall names it), never the automatic one.
    assert users["flashpods"]["autoSubUidGidRange"] is False
    assert users["flashpods"]["subUidRanges"] == [{"startUid": 1879048192, "count": 65536}]
    assert users["flashpods"]["subGidRanges"] == [{"startGid": 1879048192, "count": 65536}]
    assert users["flashpods-api"]["extraGroups"] == ["flashpods"]
    assert users["flashpods-token"]["extraGroups"] == ["flashpods"]


def test_token_service_follows_the_api_instance_label(evaluated, valid):
    assert valid["tokenConfig"]["instance"] == valid["apiConfig"]["instance"]
    # The token service finds a job's container by the API's instance label.
    assert evaluated["overrides"]["tokenConfig"]["instance"] == "blue"


def test_the_module_neither_sets_nor_reads_services_spire():
    # nixos-25.11 has no services.spire (it came with nixpkgs PR #481447, after the
    # branch-off): a module that names it fails to evaluate there, even with SPIRE off.
    # (The typed stubs have no services.spire either, so evaluation fails too.)
    for path in sorted((REPO / "modules").rglob("*.nix")):
        text = re.sub(r"#.*", "", path.read_text())
        assert "services.spire" not in text, path
        assert not re.search(r"\bspire\.(server|agent)\.settings", text), path


def test_spire_runs_as_the_modules_own_hardened_units(evaluated):
    spire = evaluated["spire"]["1.13.3"]
    assert spire["failedAssertions"] == []
    assert spire["everythingChecked"] is True
    units = spire["units"]
    assert {"flashpods-spire-server", "flashpods-spire-agent"} <= set(units)
    server = units["flashpods-spire-server"]["serviceConfig"]
    agent = units["flashpods-spire-agent"]["serviceConfig"]
    assert server["ExecStart"].split(" run -config ")[0].endswith("-server/bin/spire-server")
    assert agent["ExecStart"].split(" run -config ")[0].endswith("-agent/bin/spire-agent")
    for service in (server, agent):
        assert service["NoNewPrivileges"] is True
        assert service["ProtectSystem"] == "strict"
        assert service["IPAddressDeny"] == "any"
        assert service["IPAddressAllow"] == ["localhost"]
        assert service.get("DynamicUser") is None
    # The server needs no capability; the agent exactly CAP_SYS_PTRACE (it reads the
    # /proc entries of the flashpods uid's processes to find their container).
    assert server["CapabilityBoundingSet"] == ""
    assert agent["CapabilityBoundingSet"] == ["CAP_SYS_PTRACE"]
    assert agent["AmbientCapabilities"] == ["CAP_SYS_PTRACE"]
    assert agent["ProtectProc"] == "default"
    # The token service counts connections per job (pid namespace) in spire mode too.
    token = spire["tokenServiceConfig"]
    assert token["CapabilityBoundingSet"] == ["CAP_SYS_PTRACE"]
    assert token["ProtectProc"] == "default"
    assert server["User"] == "flashpods-spire-server"
    assert agent["User"] == "flashpods-spire-agent"
    assert server["StateDirectory"] == "flashpods-spire/server"
    assert server["RuntimeDirectoryMode"] == "0750"
    assert units["flashpods-spire-agent"]["requires"] == ["flashpods-spire-bootstrap.service"]
    assert "flashpods-spire-server.service" in spire["apiUnitAfter"]
    users = spire["users"]
    assert users["flashpods-spire-agent"]["extraGroups"] == ["flashpods"]
    assert "flashpods-spire-server" in users["flashpods-api"]["extraGroups"]
    assert not [name for name in units if name in ("spire-server", "spire-agent")]


def test_spire_mode_configs_are_accepted_by_the_services(evaluated):
    from flashpods_api import config as api_config
    from flashpods_token import config as token_config

    spire = evaluated["spire"]["1.13.3"]
    parsed = api_config.from_dict(spire["apiConfig"])
    assert parsed.raw["attestation"] == "spire"
    assert parsed.raw["spire"]["server_cli"].endswith("-server/bin/spire-server")
    # The admin socket sits directly in the server's 0750 runtime directory, and the
    # API mounts the agent's workload socket into every job.
    assert parsed.raw["spire"]["server_socket"] == spire["serverConfig"]["server"]["socket_path"]
    assert parsed.raw["spire"]["agent_socket"] == spire["agentConfig"]["agent"]["socket_path"]
    assert parsed.raw["spire"]["parent_id"] == "spiffe://flashpods.internal/agent/host"
    token = token_config.parse_config(spire["tokenConfig"])
    assert token.mode == "spire"
    assert spire["tokenConfig"]["spire"]["bundle_file"].endswith("/bundle.spiffe")
    # The credential proxy runs with SPIRE too: the same mode and bundle as the token
    # service (its own audience is fixed in code), started once the bundle exists.
    proxy = token_config.parse_config(spire["proxyConfig"])
    assert proxy.mode == "spire" and proxy.proxy is not None
    assert spire["proxyConfig"]["spire"] == spire["tokenConfig"]["spire"]
    assert spire["proxyConfig"]["spire"]["audience"] != "flashpods-proxy"
    assert "flashpods-spire-bundle.service" in spire["proxyUnit"]["after"]
    assert "flashpods-spire-bundle.service" in spire["proxyUnit"]["wants"]
    assert "flashpods-proxy.service" in spire["bundleBefore"]
    assert spire["failedAssertions"] == []


@pytest.mark.parametrize(
    ("version", "token_file"),
    [("1.13.2", False), ("1.13.3", True), ("1.15.0", True)],
)
def test_the_join_token_key_matches_the_spire_version(evaluated, version, token_file):
    # join_token_file exists from SPIRE 1.13.3 (spiffe/spire#6330); an older agent
    # stops on it ("unknown configuration detected").
    spire = evaluated["spire"][version]
    agent = spire["agentConfig"]["agent"]
    if token_file:
        assert agent["join_token_file"] == "$CREDENTIALS_DIRECTORY/join_token"
        assert "join_token" not in agent
        assert spire["agentExec"].startswith("/nix/store/")
    else:
        assert "join_token_file" not in agent
        # The long-standing join_token key, from the environment (readable by the
        # agent's uid and root only), which the wrapper fills from the credential.
        assert agent["join_token"] == "$FLASHPODS_SPIRE_JOIN_TOKEN"
        wrapper = spire["agentExec"]
        assert 'FLASHPODS_SPIRE_JOIN_TOKEN=$(cat "$CREDENTIALS_DIRECTORY/join_token")' in wrapper
        assert "-joinToken" not in spire["agentExec"]
    load = spire["units"]["flashpods-spire-agent"]["serviceConfig"]["LoadCredential"]
    assert [entry.split(":")[0] for entry in load] == ["join_token", "trust_bundle"]


ATTESTOR = REPO / "spire" / "attestor"


def plugin_config_keys() -> set[str]:
    """The plugin_data keys the attestor plugin decodes (spire/attestor/main.go)."""
    return set(re.findall(r'`hcl:"([a-z_]+)"`', (ATTESTOR / "main.go").read_text()))


@pytest.mark.parametrize("version", ["1.13.2", "1.13.3", "1.15.0"])
def test_the_agent_loads_the_flashpods_plugin_from_its_package(evaluated, version):
    spire = evaluated["spire"][version]
    attestors = spire["agentConfig"]["plugins"]["WorkloadAttestor"]
    # The plugin only: SPIRE's docker attestor cannot see a rootless Podman job on
    # 1.13.x (nor on any SPIRE under cgroup v1), and nothing else is registered.
    assert set(attestors) == {"flashpods"}
    stanza = attestors["flashpods"]
    package = spire["attestor"]
    assert stanza["plugin_cmd"] == f"{package['storePath']}/bin/{package['mainProgram']}"
    # No checksum: the store path is immutable (spire.nix says why).
    assert set(stanza) == {"plugin_cmd", "plugin_data"}
    data = stanza["plugin_data"]
    assert set(data) <= plugin_config_keys()
    assert data["podman_socket"] == "unix:///run/flashpods/podman/podman.sock"
    # The label the API puts on this host's containers.
    assert data["instance"] == spire["apiConfig"]["instance"]
    # The old docker attestor's socket links are gone.
    assert spire["tmpfilesFiles"] == ["10-flashpods"]


def test_the_registrars_selectors_are_the_ones_the_plugin_answers(evaluated):
    from flashpods_api.registrar import SpireRegistrar

    spire = evaluated["spire"]["1.13.3"]
    api = spire["apiConfig"]
    registrar = SpireRegistrar(
        server_cli=api["spire"]["server_cli"],
        server_socket=api["spire"]["server_socket"],
        trust_domain=api["spire"]["trust_domain"],
        parent_id=api["spire"]["parent_id"],
        instance=api["instance"],
    )
    selectors = registrar._selectors("job-1", "worker")
    # SPIRE prefixes a plugin's selector values with the plugin's name.
    (plugin_name,) = spire["agentConfig"]["plugins"]["WorkloadAttestor"]
    assert {s.split(":", 1)[0] for s in selectors} == {plugin_name}
    data = spire["agentConfig"]["plugins"]["WorkloadAttestor"][plugin_name]["plugin_data"]
    assert sorted(selectors) == [
        f"flashpods:instance:{data['instance']}",
        "flashpods:job:job-1",
        "flashpods:kind:worker",
    ]


def test_the_agent_unit_has_what_the_plugin_needs_and_no_more(evaluated):
    spire = evaluated["spire"]["1.13.3"]
    agent = spire["units"]["flashpods-spire-agent"]["serviceConfig"]
    # Other uids' PID namespaces: CAP_SYS_PTRACE, ambient so the plugin child has it.
    assert agent["CapabilityBoundingSet"] == ["CAP_SYS_PTRACE"]
    assert agent["AmbientCapabilities"] == ["CAP_SYS_PTRACE"]
    # go-plugin makes the plugin's socket in $TMPDIR; /tmp is read-only otherwise.
    assert agent["PrivateTmp"] is True
    assert agent["ProtectSystem"] == "strict"
    # The Podman socket (0660, group flashpods) through the group, not a capability.
    assert spire["users"]["flashpods-spire-agent"]["extraGroups"] == ["flashpods"]
    assert "flashpods-podman.service" in spire["units"]["flashpods-spire-agent"]["after"]


def docs_vendor_hash() -> str:
    """The vendorHash docs/nixos.md gives for the plugin (its own section)."""
    text = (REPO / "docs" / "nixos.md").read_text()
    heading = "### The attestor plugin's package and vendorHash"
    section = text.split(heading, 1)[1].split("\n#", 1)[0]
    (value,) = set(re.findall(r"`(sha256-[A-Za-z0-9+/]{43}=)`", section))
    return value


def test_the_plugin_package_is_built_as_nixos_25_11_builds_go(evaluated):
    package = evaluated["spire"]["1.13.3"]["attestor"]
    args = package["goModuleArgs"]
    assert package["pname"] == "flashpods-spire-attestor"
    assert args["src"] == str(ATTESTOR)
    # The hash the docs give, which tests/integration/spire recomputes from go.sum.
    assert args["vendorHash"] == docs_vendor_hash()
    assert args["proxyVendor"] is False
    # 25.11's buildGoModule takes CGO_ENABLED only in env (the stub refuses it too).
    assert args["env"] == {"CGO_ENABLED": "0"}
    # The binary the agent config names.
    assert f"$out/bin/{package['mainProgram']}" in args["postInstall"]
    assert args["doCheck"] is True


# nixos-25.11's `go` and buildGoModule: Go 1.25 (docs/nixos.md). A go.mod naming a
# newer Go fails the Nix build (buildGoModule sets GOTOOLCHAIN=local).
NIXOS_25_11_GO = (1, 25)


def test_the_plugins_go_mod_names_a_go_that_nixos_25_11_builds():
    text = (ATTESTOR / "go.mod").read_text()
    (line,) = re.findall(r"(?m)^go (\d+)\.(\d+)(?:\.\d+)?$", text)
    assert (int(line[0]), int(line[1])) <= NIXOS_25_11_GO, line
    toolchain = re.findall(r"(?m)^toolchain go(\d+)\.(\d+)", text)
    assert all((int(a), int(b)) <= NIXOS_25_11_GO for a, b in toolchain), toolchain
    # Vendored code is never committed: buildGoModule vendors from vendorHash.
    assert not (ATTESTOR / "vendor").exists()


def test_spire_on_nixos_25_11_passes_every_assertion(evaluated):
    # The plugin works with 25.11's SPIRE 1.13.x: no version is refused.
    for version in ("1.13.2", "1.13.3", "1.15.0"):
        assert evaluated["spire"][version]["failedAssertions"] == []
        assert evaluated["spire"][version]["everythingChecked"] is True


def test_no_unit_requires_the_scripted_wireguard_unit(evaluated, valid):
    # With networking.wireguard.useNetworkd there is no wireguard-<if>.service; a unit
    # that requires it never starts. Both backends make the device unit.
    for units in (evaluated["networkd"], valid["units"]):
        for name, unit in units.items():
            assert not [u for u in unit["requires"] if u.startswith("wireguard-")], name
    for name in ("flashpods-api", "flashpods-rsyncd"):
        unit = evaluated["networkd"][name]
        assert "sys-subsystem-net-devices-wg0.device" in unit["after"]
        assert "sys-subsystem-net-devices-wg0.device" in unit["wants"]
    # They bind the tunnel address, which comes a moment after the device: retried.
    assert valid["units"]["flashpods-api"]["serviceConfig"]["Restart"] == "always"
    assert valid["units"]["flashpods-rsyncd"]["serviceConfig"]["Restart"] == "on-failure"
    assert valid["rsyncdUnitConfig"] == {"StartLimitIntervalSec": 0}


def test_settings_override_generated_keys_and_durations_convert(evaluated):
    cfg = evaluated["overrides"]["apiConfig"]
    assert cfg["limits"]["log_bytes"] == 1024
    assert cfg["retention"]["artifacts_s"] == 90
    assert cfg["default_timeout_s"] == 2 * 86400


def test_warm_pool_and_control_dir_reach_the_api_config(valid, evaluated):
    from flashpods_api import config as api_config

    default = api_config.from_dict(valid["apiConfig"])
    assert default.raw["warm_pool"] == {"worker": 1, "sub_agent": 1}  # on by default
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
    "spireBadInstance": ["services.flashpods.api.settings.instance", "flashpods.instance"],
    "samePorts": ["services.flashpods.rsync.port"],
    "controlInWorkspaces": ["services.flashpods.storage.control", "group flashpods"],
    "badWarmKind": ["services.flashpods.api.warmPool", "worker or sub_agent"],
    "oldPolicyName": ["token.policy.agent was renamed", "services.flashpods.token.policy.subAgent"],
    "tokenSocketBesidePodman": [
        "services.flashpods.token.socket",
        "/run/flashpods/token/token.sock",
    ],
    "subIdsHoldAUid": ["services.flashpods.podman.subIdStart", "the uid of user flashpods"],
    "subIdsOverlapAnotherUser": ["podman.subIdStart", "the subordinate uids of user alice"],
    # The load-time check of the token service (proxy_config.py), at evaluation.
    "secretWithoutRule": [
        "services.flashpods.token.secrets.SLACK_TOKEN has no host rule",
        "services.flashpods.proxy.rules.SLACK_TOKEN",
        "services.flashpods.token.envDelivery",
    ],
    "ruleWithoutSecret": ["name SLACK_TOKEN", "services.flashpods.token.secrets.<NAME>"],
    "ruleAndEnvDelivery": ["GITHUB_TOKEN is in both proxy.rules and token.envDelivery"],
    "rulesWithProxyOff": ["services.flashpods.proxy.enable is false"],
    "encryptedGeneratedKey": ["services.flashpods.proxy.ca.generate = false"],
    "caKeyInStore": ["proxy.ca.keyFile", "outside /nix/store"],
    "caDirAboveStorage": ["services.flashpods.proxy.ca.keyFile", "/var/lib/flashpods/workspaces"],
}


@pytest.mark.parametrize("case", sorted(BROKEN_CASES))
def test_broken_configurations_fail_with_a_message_saying_what_to_set(evaluated, case):
    messages = evaluated["broken"][case]
    assert messages, f"{case} passed every assertion"
    for expected in BROKEN_CASES[case]:
        assert any(expected in m for m in messages), (expected, messages)


def test_a_duration_typo_fails_evaluation(evaluated):
    assert evaluated["broken"]["badDurationFails"] is True


def test_a_rule_without_hosts_fails_evaluation(evaluated):
    assert evaluated["broken"]["emptyRuleFails"] is True


def test_nothing_is_set_up_when_disabled(evaluated):
    assert evaluated["disabled"]["units"] == []


def test_python_packages_map_every_dependency_to_a_nixpkgs_attribute():
    result = nix_eval("tests/unit/nix/eval-packages.nix", "--arg", "nixpkgsLib", str(LIB))
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
        # Names, never `true` (which would also drop an upper bound).
        assert isinstance(package["pythonRelaxDeps"], list)


def mcp_upper_bound() -> tuple[str, str] | None:
    """(operator, version) of mcp/pyproject.toml's upper bound on mcp, if it has one."""
    project = tomllib.loads((REPO / "mcp/pyproject.toml").read_text())["project"]
    (spec,) = [d for d in project["dependencies"] if re.match(r"mcp\b", d)]
    bound = re.search(r"(<=?)\s*([0-9][0-9A-Za-z.]*)", spec.split(";")[0])
    return (bound.group(1), bound.group(2)) if bound else None


def test_an_mcp_past_the_declared_upper_bound_fails_the_nix_package_by_name():
    # pythonRelaxDeps = true would strip "<2" and build a package that fails on import
    # with mcp 2 (mcp.server.fastmcp is gone). A nixpkgs past the bound must fail.
    bound = mcp_upper_bound()
    assert bound, "mcp/pyproject.toml must bound mcp from above (an API break)"
    op, version = bound
    past = version if op == "<" else version + ".1"
    result = nix_eval(
        "tests/unit/nix/eval-packages.nix",
        "--arg",
        "nixpkgsLib",
        str(LIB),
        "--argstr",
        "mcpVersion",
        past,
    )
    assert result.returncode != 0, result.stdout
    assert f"flashpods-mcp needs mcp {op}{version}" in result.stderr
    assert f"this nixpkgs has mcp {past}" in result.stderr


def test_flake_provides_every_output_of_the_spec():
    result = nix_eval(
        "--readonly-mode", "tests/unit/nix/eval-flake.nix", "--arg", "nixpkgsLib", str(LIB)
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
        "flashpods-spire-attestor",
        "worker-image",
        "agent-image",
    }
    assert flake["apps"] == ["dev-host"]
    assert flake["devShells"] == ["default"]
    checks = set(flake["checks"])
    # The plugin package is built (and its Go tests run) by `nix flake check`.
    assert {"unit-tests", "formatting", "example-host", "flashpods-spire-attestor"} <= checks
    # With the flashpods plugin, nixos-25.11's SPIRE (1.13.x) attests jobs: the
    # SPIRE VM test is among the checks; the other three run with peer attestation.
    assert {c for c in checks if c.startswith("vm-")} == {
        "vm-laptop-only-api-and-rsync",
        "vm-job-containers-reach-only-the-internet",
        "vm-retention-crash-safety-no-leaks",
        "vm-spire-attested-secrets",
    }
    assert flake["example"]["system"] == "x86_64-linux"


def test_the_formatting_check_gets_the_sources_into_its_sandbox():
    # A list of toString'd paths names files outside the build sandbox (no string
    # context); the sources must reach it as a store path the command depends on.
    result = nix_eval(
        "--readonly-mode", "tests/unit/nix/eval-flake.nix", "--arg", "nixpkgsLib", str(LIB)
    )
    assert result.returncode == 0, result.stderr
    formatting = json.loads(result.stdout)["formatting"]
    assert formatting["hasContext"] is True
    (source,) = formatting["context"]
    assert source.startswith("/nix/store/") and source in formatting["command"]
    assert str(REPO) not in formatting["command"]
    assert "nixfmt --check" in formatting["command"]


PROBES = {
    # An option nixpkgs (the typed stubs) does not have, set and read.
    "set": (
        "{ services.spire.server.enable = true; }",
        "The option `services.spire' does not exist",
    ),
    "read": (
        "{ config, ... }:"
        " { services.flashpods.token.socket = config.services.spire.agent.socket; }",
        "attribute 'spire' missing",
    ),
    "set-in-a-unit": (
        '{ systemd.services.flashpods-api.serviceConfigg.User = "x"; }',
        "serviceConfigg",
    ),
}


@pytest.mark.parametrize("probe", sorted(PROBES))
def test_an_option_missing_from_nixpkgs_fails_the_evaluation_by_name(tmp_path, probe):
    module, message = PROBES[probe]
    (tmp_path / "probe.nix").write_text(module)
    expression = tmp_path / "eval.nix"
    expression.write_text(
        f"""
let
  lib = import {LIB};
  stubs = import {REPO}/tests/unit/nix/stubs.nix {{ inherit lib; }};
  drv = name: stubs.fakeDrv name {{ meta.mainProgram = name; }};
  standIns.services.flashpods = {{
    package = {{ api = drv "api"; token = drv "token"; init = drv "init"; }};
    api.images.load = [ ];
  }};
  config = (lib.evalModules {{
    modules = [ stubs.module {REPO}/modules/flashpods standIns ./probe.nix ];
  }}).config;
in
builtins.deepSeq (removeAttrs config [ "_module" ]) true
"""
    )
    result = subprocess.run(
        [NIX or "nix-instantiate", "--eval", "--strict", str(expression)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0, result.stdout
    assert message in result.stderr, result.stderr


def test_a_host_without_resolvers_is_warned_that_jobs_get_no_dns(evaluated):
    assert evaluated["warnings"]["valid"] == []
    (warning,) = evaluated["warnings"]["noResolvers"]
    assert "services.flashpods.firewall.jobResolvers" in warning
