"""Real SPIRE on the dev host: a spire-server and a spire-agent for one host (docs/spire.md).

One machine, so the agent attests itself to the server with a join token; the server
listens on loopback only. The server runs as the API's account (the registrar uses its
admin socket, which stays in a directory only that account can open); the agent runs as
the token service's account with exactly CAP_SYS_PTRACE (the flashpods workload attestor
reads job processes' PID namespaces) and loads that plugin as an external plugin,
pinned by its checksum. Only the agent's Workload API socket is reachable by others:
jobs get it mounted, the token service streams the JWT bundle from it.

Binaries come from scripts/lib/spire.sh (built once, cached under /var/cache).
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .accounts import Account
from .configs import TRUST_DOMAIN
from .process import SYSTEM_PATH, Service, as_user

AGENT_ID = f"spiffe://{TRUST_DOMAIN}/agent/host"
AUDIENCE = "flashpods-token"
# Where the token service takes SPIRE's JWT keys from: the agent's FetchJWTBundles
# stream (default: follows rotation by itself) or a bundle file written at start.
BUNDLE_SOURCES = ("workload_api", "file")
CLI_TIMEOUT_S = 60
# How often the agent asks the server for new entries: a job's entry is created right
# before its container starts, and flashpods-init retries until it arrives.
AGENT_SYNC_INTERVAL = "1s"


@dataclass(frozen=True)
class SpireBinaries:
    server: Path
    agent: Path  # static: also the Workload API client inside job containers
    attestor: Path


def install_script() -> Path:
    """scripts/lib/spire.sh of the checkout ($FLASHPODS_REPO, else next to this module)."""
    repo = os.environ.get("FLASHPODS_REPO")
    candidates = [Path(repo)] if repo else []
    candidates.append(Path(__file__).resolve().parents[3])
    for candidate in candidates:
        script = candidate / "scripts" / "lib" / "spire.sh"
        if script.is_file():
            return script
    raise RuntimeError(
        "scripts/lib/spire.sh not found: set FLASHPODS_REPO to the Flashpods checkout "
        "(scripts/dev-host does)"
    )


@functools.cache
def install(timeout_s: float = 3600) -> SpireBinaries:
    """Build or find SPIRE and the plugin (instant when cached; tens of minutes cold).
    Once per process: the plugin's cache key covers its sources, which do not change
    while a dev host or a test session runs."""
    out = subprocess.run(
        ["bash", str(install_script())],
        capture_output=True, text=True, timeout=timeout_s, check=False,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"scripts/lib/spire.sh failed:\n{out.stderr[-3000:]}")
    paths = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
    return SpireBinaries(
        Path(paths["spire_server"]), Path(paths["spire_agent"]), Path(paths["attestor"])
    )


@dataclass(frozen=True)
class SpirePaths:
    root: Path  # <host root>/spire

    @property
    def server_dir(self) -> Path:
        return self.root / "server"  # 0700, the server's account

    @property
    def server_socket(self) -> Path:
        return self.server_dir / "api.sock"

    @property
    def server_config(self) -> Path:
        return self.server_dir / "server.conf"

    @property
    def agent_dir(self) -> Path:
        return self.root / "agent"  # 0711, the agent's account

    @property
    def agent_data(self) -> Path:
        return self.agent_dir / "data"  # 0700

    @property
    def agent_public(self) -> Path:
        return self.agent_dir / "public"  # 0755: jobs and the token service reach it

    @property
    def agent_socket(self) -> Path:
        # The API mounts this directory into jobs and looks for that name in it.
        return self.agent_public / "agent.sock"

    @property
    def agent_config(self) -> Path:
        return self.agent_data / "agent.conf"

    @property
    def bundle_file(self) -> Path:
        return self.root / "bundle.jwks.json"  # public keys only: 0644


class Spire:
    """The server's and the agent's configs, services and CLI for one dev host."""

    def __init__(
        self,
        bins: SpireBinaries,
        paths: SpirePaths,
        *,
        podman_socket: Path,
        instance: str,
        server_account: Account,
        agent_account: Account,
        switch: bool,
        netns: str | None = None,
        server_port: int,
    ) -> None:
        self.bins = bins
        self.paths = paths
        self.podman_socket = podman_socket
        self.instance = instance
        self.server_account = server_account
        self.agent_account = agent_account
        self.switch = switch
        self.netns = netns
        self.server_port = server_port

    # ---- layout and configs ----------------------------------------------------------

    def prepare(self) -> None:
        """Directories and the server's config (the agent's is written per launch)."""
        p = self.paths
        p.root.mkdir(mode=0o711, exist_ok=True)
        os.chmod(p.root, 0o711)  # traversable, not listable
        for path, mode, owner in (
            (p.server_dir, 0o700, self.server_account),
            (p.server_dir / "data", 0o700, self.server_account),
            (p.agent_dir, 0o711, self.agent_account),
            (p.agent_data, 0o700, self.agent_account),
            (p.agent_public, 0o755, self.agent_account),
        ):
            path.mkdir(mode=mode, exist_ok=True)
            os.chmod(path, mode)
            if self.switch:
                os.chown(path, owner.uid, owner.gid)
        self._write(p.server_config, self._server_config(), self.server_account)

    def _write(self, path: Path, text: str, owner: Account) -> None:
        path.write_text(text)
        os.chmod(path, 0o600)
        if self.switch:
            os.chown(path, owner.uid, owner.gid)

    def _server_config(self) -> str:
        data = self.paths.server_dir / "data"
        # KeyManager "disk": a restarted server keeps its keys, so bundles stay valid.
        return f"""server {{
  bind_address = "127.0.0.1"
  bind_port = "{self.server_port}"
  socket_path = "{self.paths.server_socket}"
  trust_domain = "{TRUST_DOMAIN}"
  data_dir = "{data}"
  log_level = "INFO"
}}
plugins {{
  DataStore "sql" {{
    plugin_data {{
      database_type = "sqlite3"
      connection_string = "{data}/datastore.sqlite3"
    }}
  }}
  KeyManager "disk" {{
    plugin_data {{
      keys_path = "{data}/keys.json"
    }}
  }}
  NodeAttestor "join_token" {{
    plugin_data {{}}
  }}
}}
"""

    def _agent_config(self, join_token: str, bundle: Path) -> str:
        checksum = hashlib.sha256(self.bins.attestor.read_bytes()).hexdigest()
        return f"""agent {{
  data_dir = "{self.paths.agent_data}"
  log_level = "INFO"
  server_address = "127.0.0.1"
  server_port = "{self.server_port}"
  socket_path = "{self.paths.agent_socket}"
  trust_domain = "{TRUST_DOMAIN}"
  trust_bundle_path = "{bundle}"
  join_token = "{join_token}"
  # The token service streams FetchJWTBundles without being a registered workload
  # itself (services/token/flashpods_token/workload_bundle.py).
  allow_unauthenticated_verifiers = true
  experimental {{
    sync_interval = "{AGENT_SYNC_INTERVAL}"
  }}
}}
plugins {{
  NodeAttestor "join_token" {{
    plugin_data {{}}
  }}
  KeyManager "memory" {{
    plugin_data {{}}
  }}
  WorkloadAttestor "flashpods" {{
    plugin_cmd = "{self.bins.attestor}"
    plugin_checksum = "{checksum}"
    plugin_data {{
      podman_socket = "unix://{self.podman_socket}"
      instance = "{self.instance}"
    }}
  }}
}}
"""

    # ---- services --------------------------------------------------------------------

    def _env(self, account: Account) -> dict[str, str]:
        return {"PATH": SYSTEM_PATH, "LANG": "C.UTF-8", "HOME": str(account.home)}

    def server_service(self, log_path: Path, cwd: Path) -> Service:
        argv = [str(self.bins.server), "run", "-config", str(self.paths.server_config)]
        argv = as_user(argv, self.server_account, switch=self.switch, netns=self.netns)
        return Service("spire-server", argv, self._env(self.server_account), log_path, cwd)

    def agent_service(self, log_path: Path, cwd: Path, caps: tuple[str, ...]) -> Service:
        argv = [str(self.bins.agent), "run", "-config", str(self.paths.agent_config)]
        argv = as_user(
            argv, self.agent_account, switch=self.switch, netns=self.netns, ambient_caps=caps
        )
        return Service("spire-agent", argv, self._env(self.agent_account), log_path, cwd)

    def before_agent_start(self) -> None:
        """A fresh join token (single use) and an empty data dir for every agent start:
        a restarted agent attests anew, under the same SPIFFE ID, so the job entries
        parented by it still apply."""
        out = self.server_cli("token", "generate", "-spiffeID", AGENT_ID, "-ttl", "600")
        token = out.stdout.split("Token:", 1)[1].split()[0]
        data = self.paths.agent_data
        for child in data.iterdir():
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()
        self.paths.agent_socket.unlink(missing_ok=True)
        bundle = data / "bootstrap.pem"
        self._write(bundle, self.server_cli("bundle", "show").stdout, self.agent_account)
        self._write(self.paths.agent_config, self._agent_config(token, bundle), self.agent_account)

    # ---- health and CLI --------------------------------------------------------------

    def server_cli(self, *words: str, check: bool = True) -> subprocess.CompletedProcess:
        """`spire-server <subcommand...> -socketPath <ours> <flags...>` (as root)."""
        n = next((i for i, w in enumerate(words) if w.startswith("-")), len(words))
        argv = [str(self.bins.server), *words[:n], "-socketPath", str(self.paths.server_socket)]
        out = subprocess.run(
            [*argv, *words[n:]], capture_output=True, text=True, timeout=CLI_TIMEOUT_S,
            check=False,
        )  # fmt: skip
        if check and out.returncode != 0:
            raise RuntimeError(f"spire-server {' '.join(words)} failed: {out.stderr.strip()}")
        return out

    def server_healthy(self) -> bool:
        return self.server_cli("healthcheck", check=False).returncode == 0

    def agent_healthy(self) -> bool:
        out = subprocess.run(
            [str(self.bins.agent), "healthcheck", "-socketPath", str(self.paths.agent_socket)],
            capture_output=True, timeout=CLI_TIMEOUT_S, check=False,
        )  # fmt: skip
        return out.returncode == 0

    def write_bundle_file(self) -> Path:
        """The trust bundle as a JWKS file (`bundle show -format spiffe`), written whole
        and renamed into place, so a reader never sees half a file."""
        text = self.server_cli("bundle", "show", "-format", "spiffe").stdout
        target = self.paths.bundle_file
        tmp = target.with_name(target.name + ".new")
        tmp.write_text(text)
        os.chmod(tmp, 0o644)
        tmp.replace(target)
        return target

    def register(self, spiffe_id: str, selectors: list[str]) -> None:
        """An entry under this host's agent (tests use it for entries the API would not make)."""
        args = ["entry", "create", "-parentID", AGENT_ID, "-spiffeID", spiffe_id]
        for selector in selectors:
            args += ["-selector", selector]
        self.server_cli(*args)

    def fetch_jwt(
        self, socket_path: Path | None = None, runuser: str | None = None
    ) -> subprocess.CompletedProcess:
        """`spire-agent api fetch jwt` from a host process (optionally as another user)."""
        argv = [str(self.bins.agent), "api", "fetch", "jwt", "-audience", AUDIENCE,
                "-socketPath", str(socket_path or self.paths.agent_socket),
                "-timeout", "5s"]  # fmt: skip
        if runuser:
            argv = ["runuser", "-u", runuser, "--", *argv]
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=CLI_TIMEOUT_S, check=False
        )

    # ---- what the API and the token service get ---------------------------------------

    def api_overrides(self) -> dict:
        return {
            "attestation": "spire",
            "spire": {
                "server_cli": str(self.bins.server),
                "server_socket": str(self.paths.server_socket),
                "trust_domain": TRUST_DOMAIN,
                "parent_id": AGENT_ID,
                "agent_socket": str(self.paths.agent_socket),
                "agent_cli": str(self.bins.agent),
            },
        }

    def token_overrides(self, bundle_source: str) -> dict:
        if bundle_source not in BUNDLE_SOURCES:
            raise ValueError(
                f"spire bundle source {bundle_source!r} must be one of {', '.join(BUNDLE_SOURCES)}"
            )
        from_file = bundle_source == "file"
        return {
            "mode": "spire",
            "spire": {
                "agent_socket": None if from_file else str(self.paths.agent_socket),
                "bundle_file": str(self.paths.bundle_file) if from_file else None,
                "audience": AUDIENCE,
            },
        }
