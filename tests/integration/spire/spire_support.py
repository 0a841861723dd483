"""Real spire-server and spire-agent for tests: one machine, join-token node
attestation, loopback only, sockets in a private directory, the flashpods workload
attestor loaded as an external plugin. Binaries come from scripts/lib/spire.sh."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from flashpods_devhost.process import as_user

REPO = Path(__file__).resolve().parents[3]
TRUST_DOMAIN = "flashpods.internal"
AGENT_ID = f"spiffe://{TRUST_DOMAIN}/agent/host"
AUDIENCE = "flashpods-token"


def install() -> dict[str, Path]:
    """Run scripts/lib/spire.sh (cheap when cached) and return the paths it prints."""
    out = subprocess.run(
        ["bash", str(REPO / "scripts/lib/spire.sh")],
        capture_output=True, text=True, timeout=3600, check=False,
    )  # fmt: skip
    assert out.returncode == 0, f"scripts/lib/spire.sh failed:\n{out.stderr[-3000:]}"
    paths = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
    return {k: Path(v) for k, v in paths.items()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, check, timeout_s: float = 60, logs: list[Path] = ()) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    tails = "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in logs if p.exists())
    raise AssertionError(f"{what} within {timeout_s:.0f} s\n{tails}")


class Spire:
    """A running spire-server and spire-agent under root (0700)."""

    def __init__(
        self,
        bins: dict[str, Path],
        root: Path,
        podman_socket: str,
        instance: str,
        agent_account=None,
        agent_caps: Sequence[str] = (),
        wait_for_agent: bool = True,
        with_agent: bool = True,
        server_account=None,
    ):
        """The server runs as server_account (the API's, whose registrar uses its admin
        socket) or root; the agent as agent_account (a devhost Account whose groups
        reach the Podman socket) with exactly agent_caps, or as root."""
        self.bins = bins
        self.root = root
        root.mkdir(mode=0o711, parents=True)  # traversable, not listable
        self.server_socket = root / "server" / "api.sock"
        self.agent_dir = root / "agent"
        # The workload socket's directory is traversable: jobs reach the socket itself.
        self.agent_socket = self.agent_dir / "public" / "api.sock"
        for d in ("server/data", "agent/data", "agent/public"):
            (root / d).mkdir(parents=True, mode=0o700)
        (self.agent_dir / "public").chmod(0o755)
        self.agent_account = agent_account
        self.server_account = server_account
        self.procs: list[subprocess.Popen] = []
        self.server_log = root / "server.log"
        self.agent_log = root / "agent.log"
        self._start_server()
        if with_agent:
            self._start_agent(podman_socket, instance, agent_caps, wait_for_agent)

    # -- processes ---------------------------------------------------------------------

    def _spawn(self, argv: list[str], log: Path) -> None:
        with open(log, "ab") as fh:
            self.procs.append(
                subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, cwd=self.root)
            )

    def server_cli(self, *words: str, check: bool = True) -> subprocess.CompletedProcess:
        """`spire-server <subcommand...> -socketPath <ours> <flags...>`."""
        n = next((i for i, w in enumerate(words) if w.startswith("-")), len(words))
        argv = [str(self.bins["spire_server"]), *words[:n], "-socketPath", str(self.server_socket)]
        out = subprocess.run(
            [*argv, *words[n:]], capture_output=True, text=True, timeout=60, check=False
        )
        assert not check or out.returncode == 0, f"spire-server {words}: {out.stderr}"
        return out

    def _start_server(self) -> None:
        port = free_port()
        conf = self.root / "server.conf"
        conf.write_text(f"""
server {{
  bind_address = "127.0.0.1"
  bind_port = "{port}"
  socket_path = "{self.server_socket}"
  trust_domain = "{TRUST_DOMAIN}"
  data_dir = "{self.root}/server/data"
  log_level = "DEBUG"
}}
plugins {{
  DataStore "sql" {{
    plugin_data {{
      database_type = "sqlite3"
      connection_string = "{self.root}/server/data/datastore.sqlite3"
    }}
  }}
  KeyManager "memory" {{
    plugin_data {{}}
  }}
  NodeAttestor "join_token" {{
    plugin_data {{}}
  }}
}}
""")
        self.server_port = port
        argv = [str(self.bins["spire_server"]), "run", "-config", str(conf)]
        if self.server_account is not None:
            for path in [self.root / "server", *(self.root / "server").rglob("*")]:
                os.chown(path, self.server_account.uid, self.server_account.gid)
            argv = as_user(argv, self.server_account, switch=True)
        self._spawn(argv, self.server_log)

        def healthy() -> bool:
            return self.server_cli("healthcheck", check=False).returncode == 0

        wait_for("spire-server did not become healthy", healthy, logs=[self.server_log])

    def _start_agent(
        self, podman_socket: str, instance: str, caps: Sequence[str], wait: bool
    ) -> None:
        token_out = self.server_cli("token", "generate", "-spiffeID", AGENT_ID, "-ttl", "600")
        token = token_out.stdout.split("Token:", 1)[1].split()[0]
        bundle = self.agent_dir / "bundle.pem"
        bundle.write_text(self.server_cli("bundle", "show").stdout)
        plugin = self.bins["attestor"]
        checksum = hashlib.sha256(plugin.read_bytes()).hexdigest()
        conf = self.agent_dir / "agent.conf"
        conf.write_text(f"""
agent {{
  data_dir = "{self.root}/agent/data"
  log_level = "DEBUG"
  server_address = "127.0.0.1"
  server_port = "{self.server_port}"
  socket_path = "{self.agent_socket}"
  trust_domain = "{TRUST_DOMAIN}"
  trust_bundle_path = "{bundle}"
  join_token = "{token}"
  # The token service verifies SVIDs with the Workload API's FetchJWTBundles without
  # being a registered workload itself (services/token/flashpods_token/workload_bundle.py).
  allow_unauthenticated_verifiers = true
}}
plugins {{
  NodeAttestor "join_token" {{
    plugin_data {{}}
  }}
  KeyManager "memory" {{
    plugin_data {{}}
  }}
  WorkloadAttestor "flashpods" {{
    plugin_cmd = "{plugin}"
    plugin_checksum = "{checksum}"
    plugin_data {{
      podman_socket = "unix://{podman_socket}"
      instance = "{instance}"
    }}
  }}
}}
""")
        argv = [str(self.bins["spire_agent"]), "run", "-config", str(conf)]
        if self.agent_account is not None:
            for path in [self.agent_dir, *self.agent_dir.rglob("*")]:
                os.chown(path, self.agent_account.uid, self.agent_account.gid)
            self.agent_dir.chmod(0o711)  # jobs' Podman reaches public/ to mount the socket
            argv = as_user(argv, self.agent_account, switch=True, ambient_caps=caps)
        self._spawn(argv, self.agent_log)
        self.agent_proc = self.procs[-1]
        if not wait:
            return

        def healthy() -> bool:
            out = subprocess.run(
                [str(self.bins["spire_agent"]), "healthcheck", "-socketPath",
                 str(self.agent_socket)],
                capture_output=True, timeout=30, check=False,
            )  # fmt: skip
            return out.returncode == 0

        wait_for(
            "spire-agent did not become healthy",
            lambda: self.agent_proc.poll() is None and healthy(),
            logs=[self.agent_log, self.server_log],
        )

    def register(self, spiffe_id: str, selectors: list[str]) -> None:
        """What the registrar does for a job: an entry under this agent."""
        args = ["entry", "create", "-parentID", AGENT_ID, "-spiffeID", spiffe_id]
        for selector in selectors:
            args += ["-selector", selector]
        self.server_cli(*args)

    def fetch_jwt(
        self, socket_path: Path, runuser: str | None = None
    ) -> subprocess.CompletedProcess:
        """`spire-agent api fetch jwt` from a host process (optionally as another user)."""
        argv = [str(self.bins["spire_agent"]), "api", "fetch", "jwt", "-audience", AUDIENCE,
                "-socketPath", str(socket_path), "-timeout", "5s"]  # fmt: skip
        if runuser:
            argv = ["runuser", "-u", runuser, "--", *argv]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)


def place_agent(workspace: Path, spire: Spire) -> None:
    """Give a running job the agent: its socket (a hard link: the job's mounts are fixed
    by the API, and the API mounts the socket itself only in spire mode) and the static
    spire-agent binary as the Workload API client."""
    os.link(spire.agent_socket, workspace / "agent.sock")
    shutil.copy(spire.bins["spire_agent"], workspace / "spire-agent")
    (workspace / "spire-agent").chmod(0o755)
