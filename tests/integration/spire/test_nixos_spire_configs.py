"""The SPIRE configs the NixOS module generates (modules/flashpods/spire.nix), run by the
real spire-server and spire-agent v1.13.3 (the SPIRE nixos-25.11 ships is 1.13.x): the
server starts from its config, the agent attests to it with a join token and loads the
`flashpods` workload attestor plugin with the module's plugin_data. Nothing Nix-built
runs here, so the files come from evaluating the module with nixpkgs' lib on the typed
stubs (tests/unit/nix/eval-module.nix) and only what differs on this machine is moved:
the plugin binary (the dev host's build of the same source instead of the store path),
the sockets, the port. The VM test (tests/nixos/spire-attestation.nix) is where the
units themselves run."""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from spire_support import AGENT_ID, free_port, install, wait_for

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "tests" / "unit"))
from nix.nixlib import NIX, NIX_LIB, SKIP_REASON  # noqa: E402

# A cold SPIRE build (scripts/lib/spire.sh) takes tens of minutes; a warm run seconds.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]
VERSION = "1.13.3"


@pytest.fixture(scope="module")
def generated() -> dict:
    assert NIX and NIX_LIB, SKIP_REASON
    out = subprocess.run(
        [NIX, "--eval", "--strict", "--json", "tests/unit/nix/eval-module.nix",
         "--arg", "nixpkgsLib", str(NIX_LIB)],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["spire"]


@pytest.fixture(scope="module")
def bins() -> dict[str, Path]:
    return install()


def relocate(text: str, moves: dict[str, str]) -> str:
    for old, new in moves.items():
        assert old in text, (old, text)
        text = text.replace(old, new)
    return text


@pytest.mark.parametrize("version", ["1.13.2", VERSION])
def test_spire_validates_the_generated_configs(generated, bins, tmp_path, version):
    # Both join-token variants parse: join_token_file (1.13.3) and the env-expanded key.
    facts = generated[version]
    (tmp_path / "cred").mkdir()
    (tmp_path / "cred" / "join_token").write_text("token\n")
    env = {
        "PATH": "/usr/bin:/bin",
        "STATE_DIRECTORY": str(tmp_path),
        "CREDENTIALS_DIRECTORY": str(tmp_path / "cred"),
        "FLASHPODS_SPIRE_JOIN_TOKEN": "token",
    }
    for name, text in (("server", facts["serverConfigText"]), ("agent", facts["agentConfigText"])):
        conf = tmp_path / f"{name}.json"
        conf.write_text(text)
        out = subprocess.run(
            [str(bins[f"spire_{name}"]), "validate", "-config", str(conf), "-expandEnv"],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert out.returncode == 0, f"{name}: {out.stdout}{out.stderr}\n{text}"
        assert "configuration file is valid" in out.stdout


def test_the_generated_agent_attests_and_loads_the_flashpods_plugin(generated, bins):
    facts = generated[VERSION]
    port = free_port()
    root = Path("/var/tmp") / f"flashpods-spire-nixos-{secrets.token_hex(4)}"
    for d in ("server", "agent/state", "agent/cred", "agent/public"):
        (root / d).mkdir(parents=True, mode=0o700)
    server_socket = root / "server" / "api.sock"
    agent_socket = root / "agent" / "public" / "api.sock"
    store_plugin = facts["agentConfig"]["plugins"]["WorkloadAttestor"]["flashpods"]["plugin_cmd"]
    server_conf = root / "server.json"
    server_conf.write_text(relocate(facts["serverConfigText"], {
        facts["serverConfig"]["server"]["socket_path"]: str(server_socket),
        '"bind_port":8081': f'"bind_port":{port}',
    }))  # fmt: skip
    agent_conf = root / "agent.json"
    agent_conf.write_text(relocate(facts["agentConfigText"], {
        store_plugin: str(bins["attestor"]),
        facts["agentConfig"]["agent"]["socket_path"]: str(agent_socket),
        '"server_port":8081': f'"server_port":{port}',
    }))  # fmt: skip
    procs: list[subprocess.Popen] = []
    logs = {name: root / f"{name}.log" for name in ("server", "agent")}

    def spawn(argv: list[str], log: Path, **env: str) -> None:
        with open(log, "ab") as fh:
            procs.append(subprocess.Popen(
                argv, stdout=fh, stderr=subprocess.STDOUT, cwd=root,
                env={"PATH": "/usr/bin:/bin", **env},
            ))  # fmt: skip

    def server_cli(*words: str) -> str:
        """`spire-server <subcommand...> -socketPath <ours> <flags...>`."""
        n = next((i for i, w in enumerate(words) if w.startswith("-")), len(words))
        out = subprocess.run(
            [str(bins["spire_server"]), *words[:n], "-socketPath", str(server_socket), *words[n:]],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert out.returncode == 0, (words, out.stderr)
        return out.stdout

    def healthy(binary: str, socket: Path) -> bool:
        out = subprocess.run(
            [str(bins[binary]), "healthcheck", "-socketPath", str(socket)],
            capture_output=True, timeout=30, check=False,
        )  # fmt: skip
        return out.returncode == 0

    try:
        spawn([str(bins["spire_server"]), "run", "-config", str(server_conf), "-expandEnv"],
              logs["server"], STATE_DIRECTORY=str(root / "server"))  # fmt: skip
        wait_for("the generated server config did not start spire-server",
                 lambda: healthy("spire_server", server_socket), logs=[logs["server"]])  # fmt: skip
        # What flashpods-spire-bootstrap hands the agent as credentials.
        token = re.search(r"Token: (\S+)", server_cli("token", "generate", "-spiffeID", AGENT_ID))
        assert token, "no join token"
        (root / "agent/cred/join_token").write_text(token.group(1))
        bundle = server_cli("bundle", "show", "-format", "pem")
        (root / "agent/cred/trust_bundle").write_text(bundle)
        spawn([str(bins["spire_agent"]), "run", "-config", str(agent_conf), "-expandEnv"],
              logs["agent"], STATE_DIRECTORY=str(root / "agent/state"),
              CREDENTIALS_DIRECTORY=str(root / "agent/cred"))  # fmt: skip
        wait_for("the generated agent config did not make a healthy spire-agent",
                 lambda: healthy("spire_agent", agent_socket),
                 logs=[logs["agent"], logs["server"]])  # fmt: skip
        log = logs["agent"].read_text()
        loaded = [line for line in log.splitlines() if 'msg="Plugin loaded"' in line]
        assert any("plugin_name=flashpods" in line and "external=true" in line
                   for line in loaded), log  # fmt: skip
        # The only workload attestor, configured with the module's plugin_data.
        assert [line for line in loaded if "plugin_type=WorkloadAttestor" in line] == [
            line for line in loaded if "plugin_name=flashpods" in line
        ], log
        assert "Unknown configuration" not in log + logs["server"].read_text()
        # The agent attested with the join token (the host alias, the parent of every
        # job entry, hangs off that token's agent ID).
        assert f"join_token/{token.group(1)}" in server_cli("agent", "list")
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.root
def test_the_plugin_needs_a_writable_tmpdir_which_the_unit_gets_from_private_tmp(
    generated, bins, tmp_path
):
    # hashicorp/go-plugin makes the plugin's socket in os.TempDir(); under the unit's
    # ProtectSystem=strict, /tmp is read-only unless PrivateTmp gives it a private one.
    # A read-only TMPDIR (a read-only bind mount, which binds root too) stops the agent.
    facts = generated[VERSION]
    agent_unit = facts["units"]["flashpods-spire-agent"]["serviceConfig"]
    assert agent_unit["ProtectSystem"] == "strict" and agent_unit["PrivateTmp"] is True
    store_plugin = facts["agentConfig"]["plugins"]["WorkloadAttestor"]["flashpods"]["plugin_cmd"]
    for d in ("state", "cred", "public", "tmp"):
        (tmp_path / d).mkdir()
    (tmp_path / "cred" / "join_token").write_text("token")
    (tmp_path / "cred" / "trust_bundle").write_text("")
    conf = tmp_path / "agent.json"
    conf.write_text(relocate(facts["agentConfigText"], {
        store_plugin: str(bins["attestor"]),
        facts["agentConfig"]["agent"]["socket_path"]: str(tmp_path / "public" / "api.sock"),
    }))  # fmt: skip
    tmp = tmp_path / "tmp"
    agent = f"{bins['spire_agent']} run -config {conf} -expandEnv"
    out = subprocess.run(
        ["unshare", "--mount", "sh", "-c", f"mount --bind -o ro {tmp} {tmp} && exec {agent}"],
        env={"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "TMPDIR": str(tmp),
             "STATE_DIRECTORY": str(tmp_path / "state"),
             "CREDENTIALS_DIRECTORY": str(tmp_path / "cred")},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    log = out.stdout + out.stderr
    assert out.returncode != 0, log
    assert "plugin init error" in log and "read-only file system" in log, log
    assert 'msg="Plugin loaded" external=true plugin_name=flashpods' not in log
