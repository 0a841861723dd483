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
from pathlib import Path

from .host import DEFAULT_ROOT, DEFAULT_VENV, DevHost, HostSettings

SECRET_ENV = ("ANTHROPIC_API_KEY", "GITHUB_TOKEN")
ROLE_WANTS = {"worker": ["GITHUB_TOKEN"], "agent": ["ANTHROPIC_API_KEY", "GITHUB_TOKEN"]}
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


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="flashpods-devhost", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="start the host (foreground unless --detach)")
    stop = sub.add_parser("stop", help="stop a host started with --detach")
    for p in (run, stop):
        p.add_argument(
            "--root", type=Path, default=Path(os.environ.get("FLASHPODS_DEV_ROOT", DEFAULT_ROOT))
        )
    run.add_argument("--instance", default=os.environ.get("FLASHPODS_DEV_INSTANCE", "dev"))
    run.add_argument("--api-host", default=os.environ.get("FLASHPODS_DEV_API_HOST", "127.0.0.1"))
    run.add_argument("--api-port", type=int, default=_env_int("FLASHPODS_DEV_API_PORT", 8080))
    run.add_argument(
        "--rsync-host", default=os.environ.get("FLASHPODS_DEV_RSYNC_HOST", "127.0.0.1")
    )
    run.add_argument("--rsync-port", type=int, default=_env_int("FLASHPODS_DEV_RSYNC_PORT", 8873))
    run.add_argument("--max-concurrent-jobs", type=int, default=4)
    run.add_argument(
        "--firewall",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="load the nftables table inet flashpods (root only)",
    )
    run.add_argument(
        "--laptop-if",
        default="lo",
        help="interface the laptop's traffic arrives on (the WireGuard interface; lo on loopback)",
    )
    run.add_argument("--laptop-addr", default="127.0.0.1", help="the laptop's address")
    run.add_argument("--detach", action="store_true", help="return once /healthz answers")
    env_file = os.environ.get("FLASHPODS_DEV_ENV_FILE")
    run.add_argument(
        "--env-file",
        type=Path,
        default=Path(env_file) if env_file else None,
        help="where to write FLASHPODS_API_URL etc. (default ~/.config/flashpods/dev-host.env "
        "of the invoking user)",
    )
    return parser.parse_args(argv)


def pid_file(root: Path) -> Path:
    return root / "run" / "devhost.pid"


def state_file(root: Path) -> Path:
    return root / "run" / "devhost.json"


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        if args.command == "stop":
            return stop(args.root)
        if args.detach:
            return detach(args)
        return run(args)
    except (RuntimeError, ValueError, TimeoutError) as error:
        print(f"flashpods-devhost: {error}", file=sys.stderr)
        return 1


def settings_from(args: argparse.Namespace) -> HostSettings:
    secrets = {name: os.environ[name] for name in SECRET_ENV if os.environ.get(name)}
    roles = {role: [n for n in names if n in secrets] for role, names in ROLE_WANTS.items()}
    return HostSettings(
        root=args.root,
        instance=args.instance,
        api_host=args.api_host,
        api_port=args.api_port,
        rsync_host=args.rsync_host,
        rsync_port=args.rsync_port,
        max_concurrent_jobs=args.max_concurrent_jobs,
        secrets=secrets,
        roles=roles,
        firewall=args.firewall,
        token_overrides={"proxy": {"rules": {n: PROXY_RULES[n] for n in secrets}}},
        venv=Path(os.environ.get("FLASHPODS_VENV", DEFAULT_VENV)),
        api_overrides={"allowed_peers": [args.laptop_addr]},
        firewall_values={
            "wg_if": args.laptop_if,
            "laptop_addr": args.laptop_addr,
            "resolvers": resolvers(),
        },
    )


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
    host = DevHost(settings_from(args))
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


def supervise(host: DevHost, stopping) -> None:
    """Restart a service that died (a few times), so a crash does not end the host."""
    restarts = dict.fromkeys(host._services, 0)  # with "proxy" when it runs
    while not stopping():
        time.sleep(0.5)
        for name, service in host._services.items():
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
    argv = [sys.executable, "-m", "flashpods_devhost.cli", "run"]
    for flag, value in (
        ("--root", root),
        ("--instance", args.instance),
        ("--api-host", args.api_host),
        ("--api-port", args.api_port),
        ("--rsync-host", args.rsync_host),
        ("--rsync-port", args.rsync_port),
        ("--max-concurrent-jobs", args.max_concurrent_jobs),
    ):
        argv += [flag, str(value)]
    argv.append("--firewall" if args.firewall else "--no-firewall")
    argv += ["--laptop-if", args.laptop_if, "--laptop-addr", args.laptop_addr]
    if args.env_file:
        argv += ["--env-file", str(args.env_file)]
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
    while _running_pid(root) == pid:
        if time.monotonic() > deadline:
            raise RuntimeError(f"dev host pid {pid} did not stop within 60 s")
        time.sleep(0.2)
    print(f"flashpods-devhost: stopped the dev host on {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
