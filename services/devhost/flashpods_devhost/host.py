"""The dev host: podman service, token service, rsyncd, API and reaper under one root.

This is the one way to start a host outside NixOS (docs/design.md, "Dev-host launcher"):
`scripts/dev-host` and every integration/host test go through `DevHost`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import configs, probes, render
from . import spire as spire_mod
from .accounts import Account, Accounts, subordinate_ids
from .layout import Layout, Paths
from .process import SYSTEM_PATH, Service, as_user, tail

DEFAULT_ROOT = Path("/var/lib/flashpods-dev")
DEFAULT_VENV = Path("/opt/flashpods/venv")
SERVICE_ORDER = ("podman", "token", "rsyncd", "api", "reaper")
# Spire mode adds a real spire-server and spire-agent between Podman (the agent's
# plugin asks it about jobs) and the token service (which streams the agent's bundle).
SPIRE_SERVICES = ("spire-server", "spire-agent")
ATTESTATION_MODES = ("peer", "spire")
# With the credential proxy (a token config with a `proxy` block) it starts right
# after the token service; service_names adds it only then.
# Stopped first so nothing starts new containers while the rest goes down.
STOP_ORDER = ("api", "reaper", "token", "rsyncd", "podman")
LOOPBACK = "127.0.0.1"
# Signals after which kill() counts a service as down on purpose until start() brings it
# back: a stopped or continued process (SIGSTOP, SIGCONT) is still expected to live.
TERMINATING_SIGNALS = frozenset(
    {signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGABRT}
)


@dataclass
class HostSettings:
    root: Path = DEFAULT_ROOT
    instance: str = "dev"
    api_host: str = "127.0.0.1"
    api_port: int = 0  # 0 = pick a free port
    rsync_host: str = "127.0.0.1"
    rsync_port: int = 0
    # From the packaged defaults (configs.API_DEFAULTS), like every API key not set here.
    max_concurrent_jobs: int = configs.API_DEFAULTS["max_concurrent_jobs"]
    queue_limit: int = configs.API_DEFAULTS["queue_limit"]
    retention: dict[str, int] = field(
        default_factory=lambda: dict(configs.API_DEFAULTS["retention"])
    )
    secrets: dict[str, str] = field(default_factory=dict)
    roles: dict[str, list[str]] = field(default_factory=lambda: {"worker": [], "sub_agent": []})
    # Warm containers per kind; None = the packaged default (a small pool: the first
    # spawn takes the warm path). {} starts every job cold.
    warm_pool: dict[str, int] | None = None
    api_overrides: dict[str, Any] = field(default_factory=dict)
    netns: str | None = None  # run every service inside this network namespace
    firewall: bool = False  # load the project's nftables table (root; in netns for tests)
    # Beyond design.md: rarely changed knobs.
    # render.render_firewall keywords besides api_port/rsync_port/job_uid/job_subuids:
    # wg_if, laptop_addr, resolvers (needed when firewall=True).
    token_overrides: dict[str, Any] = field(default_factory=dict)
    firewall_values: dict[str, Any] = field(default_factory=dict)
    venv: Path = DEFAULT_VENV
    api_workers: int = 2
    healthz_timeout_s: float = 60.0
    # "spire": real spire-server and spire-agent (flashpods_devhost.spire), the API's
    # registrar and the token service in spire mode; "peer": kernel facts, no SPIRE.
    attestation: str = "peer"
    spire_bundle: str = "workload_api"  # or "file": the token service's key source
    spire_binaries: spire_mod.SpireBinaries | None = None  # None: scripts/lib/spire.sh

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.venv = Path(self.venv)
        if not self.root.is_absolute():
            raise ValueError(f"root {self.root} must be an absolute path")
        if not self.instance or not all(c.isalnum() or c in "-_." for c in self.instance):
            raise ValueError(
                f"instance {self.instance!r} must be non-empty letters, digits, '-', '_' or '.'"
            )
        if self.attestation not in ATTESTATION_MODES:
            raise ValueError(
                f"attestation {self.attestation!r} must be one of {', '.join(ATTESTATION_MODES)}"
            )
        if self.spire_bundle not in spire_mod.BUNDLE_SOURCES:
            raise ValueError(
                f"spire_bundle {self.spire_bundle!r} must be one of "
                f"{', '.join(spire_mod.BUNDLE_SOURCES)}"
            )


class DevHost:
    def __init__(self, settings: HostSettings) -> None:
        self.settings = settings
        self.paths = Paths(settings.root)
        self._accounts: Accounts | None = None
        self._services: dict[str, Service] = {}
        self._firewall_loaded = False
        # Services a test killed with kill(): their death is no failure of the others' start.
        self._killed: set[str] = set()
        self.api_port = settings.api_port
        self.rsync_port = settings.rsync_port
        self.api_token = ""
        self.api_config: dict[str, Any] = {}
        self.token_config: dict[str, Any] = {}
        self.spire: spire_mod.Spire | None = None  # spire mode: the host's SPIRE

    @property
    def service_names(self) -> tuple[str, ...]:
        """The services this host runs, in start order."""
        names: tuple[str, ...] = SERVICE_ORDER
        if self.settings.attestation == "spire":
            names = (names[0], *SPIRE_SERVICES, *names[1:])
        if "proxy" in self.token_config:  # known once the configs are written
            at = names.index("token") + 1
            names = (*names[:at], "proxy", *names[at:])
        return names

    # ---- what tests and scripts use -------------------------------------------------

    @property
    def api_url(self) -> str:
        return f"http://{_url_host(self.settings.api_host)}:{self.api_port}"

    @property
    def rsync_url(self) -> str:
        return f"rsync://{_url_host(self.settings.rsync_host)}:{self.rsync_port}/uploads"

    @property
    def token_socket(self) -> Path:
        return self.paths.token_socket

    @property
    def proxy_socket(self) -> Path:
        """The credential proxy's socket, beside the token socket (docs/design.md)."""
        return self.paths.token_socket.parent / "proxy.sock"

    @property
    def podman_url(self) -> str:
        return f"unix://{self.paths.podman_socket}"

    @property
    def accounts(self) -> Accounts:
        if self._accounts is None:
            self._accounts = Accounts.resolve()
        return self._accounts

    def __enter__(self) -> DevHost:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def podman(
        self,
        *args: str,
        timeout: float = 120,
        check: bool = False,
        input: str | None = None,
        in_netns: bool = True,
    ) -> subprocess.CompletedProcess:
        """The podman CLI as the sandbox user (same image store as the service).

        Runs inside the host's network namespace (where its containers' slirp4netns
        lives) unless in_netns=False, which listing and removing do not need.
        """
        acc = self.accounts
        netns = self.settings.netns if in_netns else None
        argv = as_user(["podman", *args], acc.podman, switch=acc.separated, netns=netns)
        return subprocess.run(
            argv,
            env=self._podman_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
            input=input,
        )

    def kill(self, name: str, sig: int = signal.SIGTERM) -> None:
        """Signal one service's process group, e.g. SIGKILL the API to simulate a crash.

        A terminating signal marks the service as down on purpose: start() of the other
        services then neither waits for it nor reports its death, until it is started.
        """
        self._service(name).kill(sig)
        if sig in TERMINATING_SIGNALS:
            self._killed.add(name)

    def log(self, name: str, lines: int = 40) -> str:
        return tail(self.paths.service_log(name), lines)

    # ---- start -----------------------------------------------------------------------

    def start(self, *names: str) -> None:
        """Start the whole host (no names) or restart the named services after kill().

        `start("api", "reaper")` restarts both, in SERVICE_ORDER. The API's /healthz
        needs the reaper's heartbeat, so it is awaited only when neither API nor reaper
        is still down on purpose; while the other one is, a restarted API is awaited
        until it answers at all, and a restarted reaper only has to stay alive.
        """
        if names:
            self._restart(names)
            return
        try:
            self._prepare()
            for service_name in self.service_names:
                self._launch(service_name)
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise

    def _restart(self, names: tuple[str, ...]) -> None:
        for name in names:
            self._service(name)  # unknown names fail before anything is restarted
        ordered = [name for name in self.service_names if name in names]
        for name in ordered:
            service = self._services[name]
            if service.running:
                service.stop()
            self._killed.discard(name)
            self._launch(name)
        if not {"api", "reaper"} & set(ordered):
            return
        if not {"api", "reaper"} & self._killed:
            self._wait_healthy()
        elif "api" in ordered:
            self._wait_answering()
        else:
            self._check_alive()

    def _prepare(self) -> None:
        s, acc, paths = self.settings, self.accounts, self.paths
        if s.netns and not acc.separated:
            raise RuntimeError("netns needs root: run the tests as root or drop netns")
        if s.firewall and not acc.separated:
            raise RuntimeError("firewall=True needs root: run as root or pass firewall=False")
        for program in ("podman", "rsync", "curl", "setpriv", "nsenter"):
            if shutil.which(program) is None:
                raise RuntimeError(f"{program} is not installed: run scripts/lib/packages.sh")
        layout = Layout(paths, acc)
        layout.create()
        if not self.api_port:
            self.api_port = probes.free_port(s.api_host, s.netns)
        if not self.rsync_port:
            # free_port releases its socket: the kernel may hand out the same port twice.
            while self.rsync_port in (0, self.api_port):
                self.rsync_port = probes.free_port(s.rsync_host, s.netns)
        self.api_token = layout.api_token()
        secret_files = layout.write_secrets(s.secrets)
        token_overrides = s.token_overrides
        if s.attestation == "spire":
            self.spire = self._new_spire()
            self.spire.prepare()
            # The test's or the operator's own overrides still win.
            token_overrides = configs.deep_merge(
                self.spire.token_overrides(s.spire_bundle), token_overrides
            )
        self.api_config = self.render_api_config()
        self.token_config = configs.token_config(
            paths=paths,
            instance=s.instance,
            socket_group=acc.sandbox_group,
            roles=s.roles,
            secret_files=secret_files,
            overrides=token_overrides,
        )
        proxy = self.token_config.get("proxy")
        if proxy is not None and s.firewall_values.get("wg_if"):
            # The proxy holds its upstream connections to the firewall's tunnel rule too.
            proxy.setdefault("refused_interfaces", [s.firewall_values["wg_if"]])
        if proxy and proxy.get("usage_dir") and not self.api_config["storage"].get("usage"):
            self.api_config["storage"]["usage"] = proxy["usage_dir"]  # shown per job
        if proxy and proxy.get("budget_dir") and self.api_config["storage"].get("usage"):
            # Per-job budgets: the API writes them where the proxy reads them, and
            # refuses a job's budget above the proxy's host default.
            storage, limits = self.api_config["storage"], self.api_config["limits"]
            storage["budgets"] = storage.get("budgets") or proxy["budget_dir"]
            if limits.get("job_budget_tokens") is None:
                limits["job_budget_tokens"] = proxy.get("budget_tokens")
        layout.write_public(paths.api_config, json.dumps(self.api_config, indent=2) + "\n")
        # Where this host answers, for `flashpods-devhost check` (doctor.py).
        endpoints = {
            "api_url": self.api_url,
            "rsync_url": self.rsync_url,
            "token_socket": str(paths.token_socket),
            "netns": s.netns,
        }
        layout.write_public(paths.run / "endpoints.json", json.dumps(endpoints) + "\n")
        layout.write_public(paths.token_config, json.dumps(self.token_config, indent=2) + "\n")
        layout.write_public(paths.rsyncd_config, self._rsyncd_config())
        if s.firewall:
            self._load_firewall()
        self._services = {name: self._define(name) for name in self.service_names}

    def _new_spire(self) -> spire_mod.Spire:
        s, acc = self.settings, self.accounts
        bins = s.spire_binaries or spire_mod.install()
        return spire_mod.Spire(
            bins,
            spire_mod.SpirePaths(self.paths.root / "spire"),
            podman_socket=self.paths.podman_socket,
            instance=s.instance,
            # The registrar (API) drives the server's admin socket; the agent shares
            # the token service's account (its groups reach the Podman socket).
            server_account=acc.api,
            agent_account=acc.token,
            switch=acc.separated,
            netns=s.netns,
            server_port=probes.free_port("127.0.0.1", s.netns),
        )

    def render_api_config(self) -> dict[str, Any]:
        """The API's JSON config for these settings (the packaged defaults overlaid)."""
        s = self.settings
        return configs.api_config(
            paths=self.paths,
            instance=s.instance,
            rsync_url=self.rsync_url,
            max_concurrent_jobs=s.max_concurrent_jobs,
            queue_limit=s.queue_limit,
            retention=s.retention,
            warm_pool=s.warm_pool,
            overrides=self._api_overrides(),
        )

    def _api_overrides(self) -> dict[str, Any]:
        """Spire mode's settings (the running SPIRE's paths), then the given overrides."""
        if self.spire is None:
            return self.settings.api_overrides
        return configs.deep_merge(self.spire.api_overrides(), self.settings.api_overrides)

    def _rsyncd_config(self) -> str:
        acc, paths, s = self.accounts, self.paths, self.settings
        return render.render_rsyncd(
            address=s.rsync_host,
            port=self.rsync_port,
            uploads=paths.uploads,
            # hosts allow: the API's peer allow-list is the one list of client addresses.
            laptop_addr=list(self.api_config.get("allowed_peers") or [LOOPBACK]),
            pid_file=paths.run / "rsyncd.pid",
            lock_file=paths.run / "rsyncd.lock",
            log_file=paths.service_log("rsyncd"),
            uid=acc.api.name,
            gid=acc.sandbox_group,
            use_chroot=acc.separated,  # chroot and uid switching need root
        )

    def _define(self, name: str) -> Service:
        s, acc, paths = self.settings, self.accounts, self.paths
        venv_bin = s.venv / "bin"
        base_env = {"PATH": SYSTEM_PATH, "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1"}
        caps: tuple[str, ...] = ()
        umask = 0o027
        if name in SPIRE_SERVICES:
            assert self.spire is not None
            if name == "spire-server":
                return self.spire.server_service(paths.service_log(name), paths.root)
            # Exactly what the flashpods attestor needs: other uids' /proc/<pid>/ns/pid.
            caps = ("sys_ptrace",) if acc.separated else ()
            return self.spire.agent_service(paths.service_log(name), paths.root, caps)
        if name == "podman":
            account: Account | None = acc.podman
            argv = ["podman", "system", "service", "--time=0", self.podman_url]
            env = self._podman_env()
            umask = 0o007  # socket 0660: group flashpods may drive the sandbox
        elif name in ("token", "proxy"):
            account = acc.token
            argv = [str(venv_bin / f"flashpods-{name}")]
            env = base_env | {
                "HOME": str(paths.token_home),
                "XDG_RUNTIME_DIR": str(paths.token_runtime),
                "FLASHPODS_TOKEN_CONFIG": str(paths.token_config),
            }
            # Peer attestation reads another uid's pid namespace through a pidfd; in
            # both modes the per-job connection cap reads it at accept (peer_key.py,
            # docs/security.md): without it, spire mode on cgroup v1 has no per-job cap.
            caps = ("sys_ptrace",) if acc.separated else ()
            umask = 0o007
        elif name == "rsyncd":
            account = None  # root: chroots, then switches to the module's uid/gid
            argv = [
                "rsync",
                "--daemon",
                "--no-detach",
                f"--config={paths.rsyncd_config}",
            ]
            env = dict(base_env)
        elif name in ("api", "reaper"):
            account = acc.api
            api_env = base_env | {
                "HOME": str(paths.api_home),
                "XDG_RUNTIME_DIR": str(paths.api_runtime),
                "FLASHPODS_API_CONFIG": str(paths.api_config),
            }
            if name == "api":
                bind = f"{s.api_host}:{self.api_port}"
                argv = [
                    str(venv_bin / "flashpods-api"),
                    f"--bind={bind}",
                    f"--workers={s.api_workers}",
                ]
                env = api_env
            else:
                argv = [str(venv_bin / "flashpods-reaper")]
                env = api_env
        else:
            raise KeyError(f"unknown service {name!r}: one of {', '.join(self.service_names)}")
        if account is not None:
            argv = as_user(argv, account, switch=acc.separated, netns=s.netns, ambient_caps=caps)
        elif s.netns:
            argv = ["nsenter", f"--net=/run/netns/{s.netns}", "--", *argv]
        return Service(
            name=name,
            argv=argv,
            env=env,
            log_path=paths.service_log(name),
            cwd=paths.root,
            umask=umask,
        )

    def _podman_env(self) -> dict[str, str]:
        acc = self.accounts
        env = {
            "PATH": SYSTEM_PATH,
            "LANG": "C.UTF-8",
            "HOME": str(acc.podman.home),
            "XDG_RUNTIME_DIR": str(acc.runtime_dir(acc.podman)),
        }
        if not acc.separated and os.environ.get("XDG_CONFIG_HOME"):
            env["XDG_CONFIG_HOME"] = os.environ["XDG_CONFIG_HOME"]
        return env

    def _launch(self, name: str) -> None:
        service = self._services[name]
        s, paths = self.settings, self.paths
        # A socket left by a killed predecessor would make the readiness probe lie.
        stale = {
            "podman": paths.podman_socket,
            "token": paths.token_socket,
            "proxy": self.proxy_socket,
        }.get(name)
        if stale is not None:
            stale.unlink(missing_ok=True)
        if name == "spire-agent":
            assert self.spire is not None
            self.spire.before_agent_start()
        service.start()
        if name == "spire-server":
            assert self.spire is not None
            probes.wait_until(
                "spire-server healthcheck", self.spire.server_healthy, 60, service.check_alive
            )
            if s.spire_bundle == "file":
                self.spire.write_bundle_file()
        elif name == "spire-agent":
            assert self.spire is not None
            probes.wait_until(
                "spire-agent healthcheck", self.spire.agent_healthy, 60, service.check_alive
            )
        elif name == "podman":
            probes.wait_until(
                "podman service socket",
                lambda: probes.unix_socket_answers(paths.podman_socket),
                60,
                service.check_alive,
            )
            os.chmod(paths.podman_socket, 0o660)
        elif name in ("token", "proxy"):
            sock = paths.token_socket if name == "token" else self.proxy_socket
            probes.wait_until(
                f"{name} service socket",
                lambda: probes.unix_socket_answers(sock),
                30,
                service.check_alive,
            )
        elif name == "rsyncd":
            probes.wait_until(
                "rsync daemon",
                lambda: probes.tcp_answers(s.rsync_host, self.rsync_port, s.netns),
                30,
                service.check_alive,
            )

    def _check_alive(self) -> None:
        """Raise when a service died that no one killed on purpose."""
        for name, service in self._services.items():
            if name not in self._killed:
                service.check_alive()

    def _wait_healthy(self) -> None:
        url = f"{self.api_url}/healthz"
        try:
            probes.wait_until(
                f"{url} (200)",
                lambda: probes.http_status(url, self.settings.netns) == 200,
                self.settings.healthz_timeout_s,
                self._check_alive,
            )
        except TimeoutError as error:
            status, body = probes.http_get(url, self.settings.netns)
            raise TimeoutError(f"{error}; last answer: {status} {body[:2000]}") from None

    def _wait_answering(self) -> None:
        """The API answers HTTP at all (/healthz says 503 while the reaper is down)."""
        url = f"{self.api_url}/healthz"
        probes.wait_until(
            f"{url} (any answer)",
            lambda: probes.http_status(url, self.settings.netns) is not None,
            self.settings.healthz_timeout_s,
            self._check_alive,
        )

    # ---- firewall --------------------------------------------------------------------

    def _load_firewall(self) -> None:
        # Read when the table is loaded, from the file newuidmap itself reads: every
        # uid the job user can become is held to the job rules.
        subuids = subordinate_ids(self.accounts.podman)
        for service in (self.accounts.api, self.accounts.token):
            if any(first <= service.uid <= last for first, last in subuids):
                raise RuntimeError(
                    f"{service.name} (uid {service.uid}) is inside the subordinate uids of "
                    f"{self.accounts.podman.name} in /etc/subuid: the job user could become "
                    "it; give the job user a range no account uses (scripts/lib/users.sh)"
                )
        values = {
            "api_port": self.api_port,
            "rsync_port": self.rsync_port,
            "job_uid": self.accounts.podman.uid,
            "job_subuids": subuids,
        } | self.settings.firewall_values
        missing = sorted({"wg_if", "laptop_addr", "resolvers"} - values.keys())
        if missing:
            raise ValueError(
                f"firewall=True needs HostSettings.firewall_values with {', '.join(missing)} "
                "(the laptop's interface and address, the resolvers jobs may use)"
            )
        render.load_firewall(render.render_firewall(**values), self.settings.netns)
        self._firewall_loaded = True

    # ---- stop ------------------------------------------------------------------------

    def stop(self, remove_root: bool = False) -> None:
        """Stop everything this host started and remove its containers (only its own)."""
        errors: list[str] = []
        for name in ("api", "reaper"):
            _collect(errors, self._services.get(name))
        try:
            self.remove_containers()
        except Exception as error:  # keep stopping the rest
            errors.append(f"removing containers: {error}")
        for name in ("proxy", "token", "rsyncd", *reversed(SPIRE_SERVICES), "podman"):
            _collect(errors, self._services.get(name))
        if self._firewall_loaded:
            try:
                render.unload_firewall(self.settings.netns)
            except Exception as error:  # keep going: the root must still be removed
                errors.append(f"removing the firewall table: {error}")
            self._firewall_loaded = False
        # `check` then says no host runs here, rather than probing dead services.
        (self.paths.run / "endpoints.json").unlink(missing_ok=True)
        if remove_root:
            self._remove_root()
        if errors:
            print("flashpods-devhost: stop: " + "; ".join(errors), file=sys.stderr)

    def remove_containers(self) -> None:
        label = f"label=flashpods.instance={self.settings.instance}"
        # Outside the netns: cleanup must work even when the namespace is already gone.
        listed = self.podman("ps", "-a", "-q", "--filter", label, timeout=60, in_netns=False)
        if listed.returncode != 0:
            raise RuntimeError(f"podman ps failed: {listed.stderr.strip()}")
        ids = listed.stdout.split()
        if ids:
            removed = self.podman("rm", "-f", "-t", "0", *ids, timeout=120, in_netns=False)
            if removed.returncode != 0:
                raise RuntimeError(f"podman rm failed: {removed.stderr.strip()}")

    def _remove_root(self) -> None:
        root = self.settings.root
        if not root.exists():
            return
        try:
            for attempt in range(3):
                try:
                    _remove_tree(root)
                    break
                except OSError as error:
                    # A process that just exited (conmon) may still have added a file.
                    if isinstance(error, PermissionError) or attempt == 2:
                        raise
                    time.sleep(0.2)
        except PermissionError:
            # Not root: files a container wrote under a sub-uid are removable only from
            # inside the rootless user namespace.
            self.podman("unshare", "rm", "-rf", str(root), timeout=120, in_netns=False)

    def _service(self, name: str) -> Service:
        if name not in self._services:
            raise KeyError(f"unknown or not started service {name!r}: one of {self.service_names}")
        return self._services[name]


def _collect(errors: list[str], service: Service | None) -> None:
    if service is None:
        return
    try:
        service.stop()
    except Exception as error:
        errors.append(f"{service.name}: {error}")


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _remove_tree(root: Path) -> None:
    """shutil.rmtree, or coreutils' rm for a tree too deep for it (a job may nest
    directories thousands deep; rmtree recurses once per level)."""
    try:
        shutil.rmtree(root)
    except RecursionError:
        done = subprocess.run(
            ["rm", "-rf", "--one-file-system", "--", str(root)], capture_output=True, text=True
        )
        if done.returncode != 0:
            raise OSError(f"rm -rf {root} failed: {done.stderr.strip()}") from None
