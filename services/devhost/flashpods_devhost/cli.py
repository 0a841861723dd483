"""`flashpods-devhost`: run a dev host in the foreground, detached, or stop a detached one.

    flashpods-devhost run [--detach] [--root DIR] [--api-port N] ...
    flashpods-devhost stop [--root DIR]

The foreground process owns every service: Ctrl-C (or SIGTERM, which `stop` sends to
the pid in <root>/run/devhost.pid) stops them all and removes the host's containers.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flashpods_api import config as api_settings

from . import configs, doctor, settings_file
from .host import ATTESTATION_MODES, DEFAULT_ROOT, DEFAULT_VENV, DevHost, HostSettings

SECRET_ENV = ("ANTHROPIC_API_KEY", "GITHUB_TOKEN")
ROLE_WANTS = {"worker": ["GITHUB_TOKEN"], "sub_agent": ["ANTHROPIC_API_KEY", "GITHUB_TOKEN"]}
# The credential proxy's host rules (docs/design.md): a job holds only a placeholder,
# the proxy puts the value into requests to these hosts.
PROXY_RULES = {
    "ANTHROPIC_API_KEY": ["api.anthropic.com"],
    "GITHUB_TOKEN": [
        "github.com",
        "api.github.com",
        "uploads.github.com",
        "codeload.github.com",
        "raw.githubusercontent.com",
    ],
}
MCP_LINE = "claude mcp add flashpods -- /opt/flashpods/venv/bin/flashpods-mcp"
RESTART_LIMIT = 5


# Built-in defaults of the flags, each after its FLASHPODS_DEV_* variable; the settings
# file (--config) comes between the two (settings_file.py: flag > file > env > default).
def _flag_defaults() -> dict[str, Any]:
    env = os.environ.get
    env_file = env("FLASHPODS_DEV_ENV_FILE")
    return {
        "root": Path(env("FLASHPODS_DEV_ROOT", str(DEFAULT_ROOT))),
        "instance": env("FLASHPODS_DEV_INSTANCE", "dev"),
        "api_host": env("FLASHPODS_DEV_API_HOST", "127.0.0.1"),
        "api_port": int(env("FLASHPODS_DEV_API_PORT") or 8080),
        "rsync_host": env("FLASHPODS_DEV_RSYNC_HOST", "127.0.0.1"),
        "rsync_port": int(env("FLASHPODS_DEV_RSYNC_PORT") or 8873),
        "max_concurrent_jobs": configs.API_DEFAULTS["max_concurrent_jobs"],
        # scripts/dev-host sets FLASHPODS_DEV_FIREWALL=1 when run as root, so a settings
        # file's `firewall = false` still wins over it.
        "firewall": env("FLASHPODS_DEV_FIREWALL") == "1",
        "laptop_if": "lo",
        "laptop_addr": "127.0.0.1",
        "env_file": Path(env_file) if env_file else None,
        "attestation": "peer",
    }


def parse(argv: list[str] | None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="flashpods-devhost", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="start the host (foreground unless --detach)")
    stop = sub.add_parser("stop", help="stop a host started with --detach")
    check = sub.add_parser(
        "check", help="what runs, what is missing and how to fix it (scripts/dev-host --check)"
    )
    # Flags the settings file can carry too default to None: "not given here".
    for p in (run, stop, check):
        p.add_argument("--root", type=Path, default=None)
        p.add_argument(
            "--config",
            type=Path,
            default=None,
            help="settings file, TOML or JSON (README.md lists every key)",
        )
    # `check` takes the flags of `run`: it checks the host those settings describe.
    for p in (run, check):
        p.add_argument("--instance", default=None)
        p.add_argument("--api-host", default=None)
        p.add_argument("--api-port", type=int, default=None)
        p.add_argument("--rsync-host", default=None)
        p.add_argument("--rsync-port", type=int, default=None)
        p.add_argument("--max-concurrent-jobs", type=int, default=None)
        p.add_argument(
            "--firewall",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="load the nftables table inet flashpods (root only)",
        )
        p.add_argument(
            "--laptop-if",
            default=None,
            help="interface the laptop's traffic arrives on (WireGuard interface; lo on loopback)",
        )
        p.add_argument("--laptop-addr", default=None, help="the laptop's address")
        p.add_argument(
            "--attestation",
            choices=ATTESTATION_MODES,
            default=None,
            help="spire: also run a real spire-server and spire-agent with the flashpods "
            "attestor, the registrar and the token service in spire mode (docs/spire.md)",
        )
        p.add_argument(
            "--env-file",
            type=Path,
            default=None,
            help="where to write FLASHPODS_API_URL etc. (default "
            "~/.config/flashpods/dev-host.env of the invoking user)",
        )
    run.add_argument("--detach", action="store_true", help="return once /healthz answers")
    args = parser.parse_args(argv)
    args.argv = argv
    return resolve(args)


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Fill every flag not given from the settings file, then the environment/default;
    args.sources says where each setting came from (printed at start)."""
    defaults = _flag_defaults()
    args.file_settings = {}
    if args.config is not None:
        args.config = args.config.resolve()
        args.file_settings = settings_file.read(args.config)
    given = []
    for name in settings_file.FLAGS:
        if not hasattr(args, name):
            continue  # `stop` takes --root only
        if getattr(args, name) is not None:
            given.append("--" + name.replace("_", "-"))
        elif name in args.file_settings:
            value = args.file_settings[name]
            setattr(args, name, Path(value) if name in ("root", "env_file") else value)
        else:
            setattr(args, name, defaults[name])
    args.sources = _sources(args.config, sorted(args.file_settings), given)
    return args


def _sources(config: Path | None, from_file: list[str], given: list[str]) -> list[str]:
    lines = [f"defaults: {configs.DEFAULTS_PATH}"]
    if config is not None:
        lines.append(f"settings file: {config} ({', '.join(from_file) or 'no keys'})")
    if given:
        lines.append(f"command line: {' '.join(given)}")
    return lines


def pid_file(root: Path) -> Path:
    return root / "run" / "devhost.pid"


def state_file(root: Path) -> Path:
    return root / "run" / "devhost.json"


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse(argv)
        if args.command == "stop":
            return stop(args.root)
        if args.command == "check":
            return doctor.main(args)
        if args.detach:
            return detach(args)
        return run(args)
    except (RuntimeError, ValueError, TimeoutError, api_settings.ConfigError) as error:
        print(f"flashpods-devhost: {error}", file=sys.stderr)
        return 1


def settings_from(args: argparse.Namespace) -> HostSettings:
    """HostSettings from the resolved flags and the settings file's other keys."""
    flat = getattr(args, "file_settings", {})
    where = str(args.config) if getattr(args, "config", None) else "settings"
    secrets = {name: os.environ[name] for name in SECRET_ENV if os.environ.get(name)}
    secrets.update(settings_file.read_secrets(flat.get("secrets", {}), where))
    roles = settings_file.section(flat, "roles") or {
        role: [n for n in names if n in secrets] for role, names in ROLE_WANTS.items()
    }
    defaults = HostSettings.__dataclass_fields__
    retention = dict(configs.API_DEFAULTS["retention"])
    retention.update(settings_file.section(flat, "retention") or {})
    return HostSettings(
        root=args.root,
        instance=args.instance,
        api_host=args.api_host,
        api_port=args.api_port,
        rsync_host=args.rsync_host,
        rsync_port=args.rsync_port,
        max_concurrent_jobs=args.max_concurrent_jobs,
        attestation=args.attestation,
        queue_limit=flat.get("queue_limit", defaults["queue_limit"].default),
        retention=retention,
        api_workers=flat.get("api_workers", defaults["api_workers"].default),
        # Kinds the file does not name keep their default pool; 0 turns one off.
        warm_pool={
            **configs.API_DEFAULTS["warm_pool"],
            **(settings_file.section(flat, "warm_pool") or {}),
        },
        secrets=secrets,
        roles=roles,
        firewall=args.firewall,
        token_overrides={
            "proxy": {"rules": {n: PROXY_RULES[n] for n in secrets if n in PROXY_RULES}}
            | ({"github_scope": flat["proxy.github_scope"]} if "proxy.github_scope" in flat else {})
        },
        venv=Path(os.environ.get("FLASHPODS_VENV", DEFAULT_VENV)),
        api_overrides={
            "allowed_peers": [args.laptop_addr],
            **settings_file.api_overrides(flat),
        },
        firewall_values={
            "wg_if": args.laptop_if,
            "laptop_addr": args.laptop_addr,
            "resolvers": resolvers(),
        },
    )


def checked_host(args: argparse.Namespace) -> DevHost:
    """The host these settings describe, its API configuration checked by the API's own
    rules now (a wrong value fails here, naming the key, not in the API's log later)."""
    host = DevHost(settings_from(args))
    api_settings.from_dict(host.render_api_config())
    return host


def resolvers(path: Path = Path("/etc/resolv.conf")) -> list[str]:
    """The nameservers jobs may query (the firewall lets the job uid reach only these)."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    found = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            found.append(fields[1].split("%")[0])
    return found


def _running_pid(root: Path) -> int | None:
    try:
        pid = int(pid_file(root).read_text())
    except (FileNotFoundError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    return pid


def run(args: argparse.Namespace) -> int:
    root = args.root
    if (pid := _running_pid(root)) and pid != os.getpid():
        raise RuntimeError(f"a dev host already runs on {root} (pid {pid}): stop it first")
    host = checked_host(args)
    for line in args.sources:
        print(f"flashpods-devhost: {line}")
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    root.mkdir(parents=True, exist_ok=True)
    (root / "run").mkdir(exist_ok=True)
    try:
        # The pid file comes first so `stop` also reaches a host that is still starting.
        pid_file(root).write_text(f"{os.getpid()}\n")
        host.start()
        client_env = write_client_env(host, args.env_file)
        state_file(root).write_text(json.dumps({"pid": os.getpid(), "env_file": str(client_env)}))
        announce(root, client_env)
        supervise(host, lambda: stopping)
    finally:
        print("flashpods-devhost: stopping", file=sys.stderr)
        host.stop()
        for path in (pid_file(root), state_file(root)):
            path.unlink(missing_ok=True)
    return 0


def supervise(host: DevHost, stopping: Callable[[], bool]) -> None:
    """Restart a service that died (a few times), so a crash does not end the host."""
    restarts = dict.fromkeys(host.service_names, 0)
    while not stopping():
        time.sleep(0.5)
        for name in host.service_names:
            service = host._services[name]
            if stopping() or service.running:
                continue
            if restarts[name] >= RESTART_LIMIT:
                raise RuntimeError(f"{name} keeps dying; last log lines:\n{host.log(name)}")
            restarts[name] += 1
            print(f"flashpods-devhost: {name} exited; restarting:\n{host.log(name, 10)}")
            host.start(name)


def invoking_user() -> pwd.struct_passwd:
    """The user behind sudo, so the laptop-side settings land in their home."""
    sudo_uid = os.environ.get("SUDO_UID")
    return pwd.getpwuid(int(sudo_uid) if sudo_uid else os.getuid())


def write_client_env(host: DevHost, env_file: Path | None) -> Path:
    """FLASHPODS_API_URL & co. for the client, owned by the user behind sudo."""
    user = invoking_user()
    target = env_file or Path(user.pw_dir) / ".config" / "flashpods" / "dev-host.env"
    created = [d for d in (target.parent, *target.parent.parents) if not d.exists()]
    target.parent.mkdir(parents=True, exist_ok=True)
    # The API's own token file is readable by the API user only: the client gets a copy.
    token_copy = target.parent / f"{target.stem}.api-token"
    token_copy.write_text(host.api_token + "\n")
    os.chmod(token_copy, 0o600)
    lines = [
        f"FLASHPODS_API_URL={host.api_url}",
        f"FLASHPODS_API_TOKEN_FILE={token_copy}",
        f"FLASHPODS_RSYNC_URL={host.rsync_url}",
    ]
    target.write_text("\n".join(lines) + "\n")
    if os.geteuid() == 0:
        for path in (token_copy, target, *created):
            os.chown(path, user.pw_uid, user.pw_gid)
    return target


def announce(root: Path, env_file: Path) -> None:
    print(f"Flashpods dev host is up (root {root}, service logs in {root / 'log'}).")
    print(f"Connection settings, written to {env_file}:")
    print(env_file.read_text().rstrip())
    # flashpods-mcp reads ~/.config/flashpods/dev-host.env itself: no settings on the line.
    print("Register the MCP server with your agent:")
    print(f"  {MCP_LINE}")
    sys.stdout.flush()


def detach(args: argparse.Namespace) -> int:
    root = args.root
    if pid := _running_pid(root):
        raise RuntimeError(f"a dev host already runs on {root} (pid {pid}): stop it first")
    checked_host(args)  # a wrong setting fails here, not in the child's log
    for line in args.sources:
        print(f"flashpods-devhost: {line}")
    # The same command line in the foreground: the child reads the same settings file.
    argv = [sys.executable, "-m", "flashpods_devhost.cli"]
    argv += [arg for arg in args.argv if arg != "--detach"]
    root.mkdir(parents=True, exist_ok=True)
    (root / "log").mkdir(exist_ok=True)
    state_file(root).unlink(missing_ok=True)
    log_path = root / "log" / "devhost.log"
    with open(log_path, "ab") as log:
        child = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )
    deadline = time.monotonic() + 180
    while not state_file(root).exists():
        if child.poll() is not None:
            raise RuntimeError(
                f"the dev host did not start (status {child.returncode}); see {log_path}:\n"
                + "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
            )
        if time.monotonic() > deadline:
            child.terminate()
            raise RuntimeError(f"the dev host did not answer /healthz in time; see {log_path}")
        time.sleep(0.2)
    env_file = Path(json.loads(state_file(root).read_text())["env_file"])
    print(f"Dev host running in the background (pid {child.pid}); stop: scripts/dev-host stop")
    announce(root, env_file)
    return 0


def stop(root: Path) -> int:
    pid = _running_pid(root)
    if pid is None:
        print(f"flashpods-devhost: no dev host runs on {root}")
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    # Until the process itself has exited, not only removed its pid file: its Python
    # teardown after that (it has imported the API's config checks) takes a moment.
    while _running_pid(root) == pid or not _exited(pid):
        if time.monotonic() > deadline:
            raise RuntimeError(f"dev host pid {pid} did not stop within 60 s")
        time.sleep(0.1)
    print(f"flashpods-devhost: stopped the dev host on {root}")
    return 0


def _exited(pid: int) -> bool:
    """Gone, or a zombie nobody has reaped yet (it was started in a session of its own)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


if __name__ == "__main__":
    sys.exit(main())
