"""`flashpods-devhost check` (`scripts/dev-host --check`): one screen saying what runs,
what is missing and the command that fixes it.

Two parts. What the host needs on this machine: programs, the venv, the static helper,
the service users (as root), the job images. What runs on the host's root: each service
of a started host, read from <root>/run/endpoints.json (DevHost writes it at start) and
asked directly: the API's /healthz (which itself reports the database, Podman, the
reaper, free disk and the warm pool), rsyncd's port, the token service's socket.
Every probe goes to loopback or to the host's own network namespace.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from . import accounts, probes
from .layout import Paths

PROGRAMS = ("podman", "rsync", "curl", "setpriv", "nsenter")
VENV_SCRIPTS = ("flashpods-api", "flashpods-reaper", "flashpods-token", "flashpods-mcp")
LOOPBACK_HOSTS = ("127.", "::1", "localhost", "[::1]")


@dataclass(frozen=True)
class Finding:
    name: str
    ok: bool
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class Machine:
    """What the checks look at; the defaults are this machine's, tests point them elsewhere."""

    root: Path
    venv: Path
    helper_path: Path
    images: tuple[str, ...]
    path: str  # $PATH the programs are looked up in
    as_root: bool


def machine_from(args: argparse.Namespace, api_config: dict) -> Machine:
    images = api_config["images"]
    return Machine(
        root=args.root,
        venv=Path(os.environ.get("FLASHPODS_VENV", "/opt/flashpods/venv")),
        helper_path=Path(api_config["helper_path"]),
        images=(images["worker"], images["sub_agent"]),
        path=os.environ.get("PATH", os.defpath),
        as_root=os.geteuid() == 0,
    )


# ---- what the machine needs ---------------------------------------------------------


def check_programs(m: Machine) -> list[Finding]:
    wanted = PROGRAMS + (("nft",) if m.as_root else ())
    missing = [p for p in wanted if shutil.which(p, path=m.path) is None]
    if missing:
        return [
            Finding(
                "programs",
                False,
                f"not installed: {', '.join(missing)}",
                "sudo bash scripts/lib/packages.sh (scripts/dev-host runs it)",
            )
        ]
    return [Finding("programs", True, ", ".join(wanted))]


def check_venv(m: Machine) -> list[Finding]:
    missing = [s for s in VENV_SCRIPTS if not os.access(m.venv / "bin" / s, os.X_OK)]
    if missing:
        return [
            Finding(
                "venv",
                False,
                f"{m.venv} lacks {', '.join(missing)}",
                f"FLASHPODS_VENV={m.venv} bash scripts/lib/venv.sh",
            )
        ]
    return [Finding("venv", True, str(m.venv))]


def check_helper(m: Machine) -> list[Finding]:
    if not os.access(m.helper_path, os.X_OK) or not m.helper_path.is_file():
        return [
            Finding(
                "helper",
                False,
                f"no executable flashpods-init at {m.helper_path}",
                f"sudo bash scripts/lib/build-helper.sh {m.helper_path}",
            )
        ]
    return [Finding("helper", True, str(m.helper_path))]


def check_users(m: Machine, names: tuple[str, ...] | None = None) -> list[Finding]:
    if not m.as_root:
        return [Finding("users", True, "not root: every service runs as you (weaker boundary)")]
    names = names or (accounts.PODMAN_USER, accounts.API_USER, accounts.TOKEN_USER)
    missing = []
    for name in names:
        try:
            pwd.getpwnam(name)
        except KeyError:
            missing.append(name)
    if missing:
        return [
            Finding(
                "users",
                False,
                f"missing: {', '.join(missing)}",
                "sudo bash scripts/lib/users.sh (scripts/dev-host runs it)",
            )
        ]
    return [Finding("users", True, ", ".join(names))]


def check_images(m: Machine) -> list[Finding]:
    if shutil.which("podman", path=m.path) is None:
        return []  # check_programs says so already
    out = []
    for image in m.images:
        argv = ["podman", "image", "exists", image]
        if m.as_root:
            argv = accounts_podman(argv)
        try:
            found = subprocess.run(argv, capture_output=True, timeout=60, check=False)
            present = found.returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            present = False
        if present:
            out.append(Finding("image", True, image))
        else:
            out.append(
                Finding(
                    "image",
                    False,
                    f"{image} is not in the job user's Podman store",
                    "sudo bash scripts/lib/build-images.sh",
                )
            )
    return out


def accounts_podman(argv: list[str]) -> list[str]:
    """Run podman as the job user, whose store the dev host uses (as root)."""
    try:
        user = pwd.getpwnam(accounts.PODMAN_USER)
    except KeyError:
        return argv
    runtime = f"/run/user/{user.pw_uid}"
    return [
        "runuser", "-u", user.pw_name, "--", "env", f"HOME={user.pw_dir}",
        f"XDG_RUNTIME_DIR={runtime}", *argv,
    ]  # fmt: skip


# ---- what runs ----------------------------------------------------------------------


def check_running(root: Path) -> list[Finding]:
    paths = Paths(root)
    endpoints_file = paths.run / "endpoints.json"
    try:
        endpoints = json.loads(endpoints_file.read_text())
    except (OSError, ValueError):
        return [
            Finding(
                "dev host",
                False,
                f"none started on {root}",
                "sudo scripts/dev-host --detach (or --root DIR / --config FILE)",
            )
        ]
    netns = endpoints.get("netns")
    out = [_api(endpoints["api_url"], netns, root)]
    out.append(_rsync(endpoints["rsync_url"], netns, root))
    out.append(_token(Path(endpoints["token_socket"]), root))
    return out


def _loopback(url: str) -> bool:
    return (urlsplit(url).hostname or "").startswith(LOOPBACK_HOSTS)


def _api(url: str, netns: str | None, root: Path) -> Finding:
    restart = f"scripts/dev-host stop --root {root}; sudo scripts/dev-host --detach"
    if not _loopback(url) and not netns:
        return Finding("api", True, f"{url}: not probed (not a loopback address)")
    code, body = probes.http_get(f"{url}/healthz", netns)
    if code is None:
        return Finding("api", False, f"nothing answers {url}: {body}", restart)
    try:
        checks = json.loads(body).get("checks", {})
    except ValueError:
        return Finding("api", False, f"{url}/healthz answered {code} with no JSON", restart)
    failing = [name for name, c in checks.items() if not c.get("ok", False)]
    warm = checks.get("warm_pool", {})
    summary = f"{url} /healthz {code}; warm pool ready {warm.get('ready')} of {warm.get('target')}"
    if failing:
        reasons = "; ".join(f"{n}: {checks[n].get('detail', checks[n])}" for n in failing)
        return Finding(
            "api",
            False,
            f"{summary}; failing: {reasons}",
            f"see {Paths(root).service_logs}/<service>.log, then restart: {restart}",
        )
    return Finding("api", True, summary)


def _rsync(url: str, netns: str | None, root: Path) -> Finding:
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 873
    if not _loopback(url) and not netns:
        return Finding("rsyncd", True, f"{url}: not probed (not a loopback address)")
    if probes.tcp_answers(host, port, netns):
        return Finding("rsyncd", True, url)
    return Finding(
        "rsyncd",
        False,
        f"nothing listens on {host}:{port}",
        f"see {Paths(root).service_log('rsyncd')}; restart the dev host",
    )


def _token(socket_path: Path, root: Path) -> Finding:
    if probes.unix_socket_answers(socket_path):
        return Finding("token service", True, str(socket_path))
    return Finding(
        "token service",
        False,
        f"nothing answers on {socket_path}",
        f"see {Paths(root).service_log('token')}; restart the dev host",
    )


# ---- the screen ---------------------------------------------------------------------


def run_checks(m: Machine) -> list[Finding]:
    return [
        *check_programs(m),
        *check_venv(m),
        *check_helper(m),
        *check_users(m),
        *check_images(m),
        *check_running(m.root),
    ]


def render(findings: list[Finding]) -> str:
    lines = []
    for f in findings:
        lines.append(f"{'ok     ' if f.ok else 'MISSING'} {f.name:<14} {f.detail}")
        if f.fix:
            lines.append(f"{'':22}fix: {f.fix}")
    bad = sum(not f.ok for f in findings)
    lines.append("all good" if not bad else f"{bad} problem{'s' if bad > 1 else ''}: see fix above")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    from .cli import checked_host

    host = checked_host(args)
    for line in args.sources:
        print(f"flashpods-devhost: {line}")
    findings = run_checks(machine_from(args, host.render_api_config()))
    print(render(findings))
    sys.stdout.flush()
    return 0 if all(f.ok for f in findings) else 1
