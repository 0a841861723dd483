"""Render and load the host's firewall and rsyncd configuration.

The templates live in ``modules/flashpods/`` and are the same files the NixOS module
renders with ``lib.replaceStrings``, so the dev host and the tests check exactly the
rules a NixOS host loads. Placeholders are ``@NAME@``; every value is validated here
before it lands in a ruleset or a daemon config, and a template with a placeholder
left over is refused.
"""

from __future__ import annotations

import ipaddress
import os
import re
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path

TEMPLATE_DIR_ENV = "FLASHPODS_TEMPLATE_DIR"
FIREWALL_TEMPLATE = "firewall.nft.in"
RSYNCD_TEMPLATE = "rsyncd.conf.in"
TABLE = "inet flashpods"

_PLACEHOLDER = re.compile(r"@([A-Z][A-Z0-9_]*)@")
_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
_ACCOUNT = re.compile(r"^[a-z_][a-z0-9_-]{0,31}\$?$")


class RenderError(ValueError):
    """A value cannot go into a template; the message says which and why."""


# scripts/lib/venv.sh copies modules/flashpods/*.in here when it builds the package, so an
# installed (non-editable) flashpods_devhost carries them; git holds them only once.
PACKAGED_TEMPLATES = Path(__file__).resolve().parent / "templates"
# An editable install or a run from the checkout: the repository's own copy.
REPOSITORY_TEMPLATES = Path(__file__).resolve().parents[3] / "modules" / "flashpods"


def template_dir() -> Path:
    """Where the shared templates are, first match wins.

    $FLASHPODS_TEMPLATE_DIR (tests point it at a modified copy), the templates packaged
    with this module, the repository's modules/flashpods.
    """
    override = os.environ.get(TEMPLATE_DIR_ENV)
    if override:
        return Path(override)
    for candidate in (PACKAGED_TEMPLATES, REPOSITORY_TEMPLATES):
        if (candidate / FIREWALL_TEMPLATE).is_file():
            return candidate
    raise RenderError(
        f"no templates in {PACKAGED_TEMPLATES} or {REPOSITORY_TEMPLATES}: install "
        f"flashpods_devhost with scripts/lib/venv.sh (it packages modules/flashpods/*.in) "
        f"or set {TEMPLATE_DIR_ENV} to a checkout's modules/flashpods"
    )


def fill(template: str, values: Mapping[str, str]) -> str:
    """Replace every ``@NAME@`` with ``values[NAME]``; refuse missing or unused names."""
    wanted = set(_PLACEHOLDER.findall(template))
    missing = sorted(wanted - values.keys())
    if missing:
        raise RenderError(f"template needs values for {', '.join(missing)}")
    unused = sorted(values.keys() - wanted)
    if unused:
        raise RenderError(f"template has no placeholder for {', '.join(unused)}")
    for name, value in values.items():
        if "\n" in value or "@" in value:
            raise RenderError(f"{name} must be one line without '@', got {value!r}")
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def _read(name: str) -> str:
    path = template_dir() / name
    try:
        return path.read_text()
    except FileNotFoundError:
        raise RenderError(
            f"template {path} not found; set {TEMPLATE_DIR_ENV} to a directory with "
            f"{FIREWALL_TEMPLATE} and {RSYNCD_TEMPLATE} (a checkout's modules/flashpods)"
        ) from None


def _port(name: str, value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise RenderError(f"{name} must be a port number 1-65535, got {value!r}")
    return str(value)


def _positive(name: str, value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RenderError(f"{name} must be a positive integer, got {value!r}")
    return str(value)


def _uid(name: str, value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RenderError(f"{name} must be a numeric id >= 0, got {value!r}")
    return str(value)


def _account(name: str, value: object) -> str:
    """A user or group as rsyncd takes it: a name or a number."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return str(value)
    if isinstance(value, str) and _ACCOUNT.match(value):
        return value
    raise RenderError(f"{name} must be a user/group name or id, got {value!r}")


def _address(name: str, value: object, version: int | None = None) -> str:
    try:
        addr = ipaddress.ip_address(str(value))
    except ValueError:
        raise RenderError(f"{name} must be an IP address, got {value!r}") from None
    if version is not None and addr.version != version:
        raise RenderError(f"{name} must be an IPv{version} address, got {value!r}")
    return str(addr)


def _path(name: str, value: object) -> str:
    text = str(value)
    if not text.startswith("/") or any(c in text for c in " \t#"):
        raise RenderError(f"{name} must be an absolute path without spaces or '#', got {value!r}")
    return text


# uid_t is 32 bits and (uid_t)-1 means "no uid".
_MAX_UID = 2**32 - 2


def _subuids(job_uid: int, ranges: object) -> str:
    """The job user's subordinate uid ranges as set elements ("100000-165535, ...").

    At least one: rootless Podman on both substrates is given an explicit range, and a
    job uid without one would leave the firewall's idea of "a job" out of step with
    what newuidmap allows. Ranges may not hold uid 0 (the host's own health checks run
    as root) nor overlap each other or the job uid (nft refuses overlapping intervals).
    """
    if isinstance(ranges, str | bytes) or not isinstance(ranges, list | tuple):
        raise RenderError(f"job_subuids must be a list of (first, last) pairs, got {ranges!r}")
    if not ranges:
        raise RenderError(
            "job_subuids is empty: give the job user an explicit subordinate uid range "
            "(scripts/lib/users.sh on the dev host, subUidRanges on NixOS)"
        )
    checked: list[tuple[int, int]] = []
    for pair in ranges:
        if (
            not isinstance(pair, list | tuple)
            or len(pair) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair)
            or not 1 <= pair[0] <= pair[1] <= _MAX_UID
        ):
            raise RenderError(
                f"job_subuids must hold (first, last) uid pairs with 1 <= first <= last <= "
                f"{_MAX_UID}, got {pair!r}"
            )
        checked.append((pair[0], pair[1]))
    checked.sort()
    for (a_first, a_last), (b_first, b_last) in zip(checked, checked[1:], strict=False):
        if b_first <= a_last:
            raise RenderError(
                f"job_subuids ranges {a_first}-{a_last} and {b_first}-{b_last} overlap"
            )
    for first, last in checked:
        if first <= job_uid <= last:
            raise RenderError(f"job_subuids range {first}-{last} holds the job uid {job_uid}")
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in checked)


def _elements(addresses: list[str]) -> str:
    return f"elements = {{ {', '.join(addresses)} }}" if addresses else ""


def firewall_values(
    *,
    wg_if: str,
    laptop_addr: str,
    api_port: int,
    rsync_port: int,
    job_uid: int,
    job_subuids: list[tuple[int, int]],
    resolvers: Iterable[str],
) -> dict[str, str]:
    """The placeholder values of firewall.nft.in, validated.

    job_subuids: the job user's subordinate uid ranges, (first, last) inclusive, as in
    /etc/subuid (accounts.subordinate_ids reads them).
    """
    if not isinstance(wg_if, str) or not _IFNAME.match(wg_if):
        raise RenderError(f"wg_if must be an interface name (1-15 of A-Za-z0-9_.-), got {wg_if!r}")
    if isinstance(resolvers, str):
        raise RenderError("resolvers must be a list of addresses, not one string")
    parsed = [ipaddress.ip_address(_address("resolvers", r)) for r in resolvers]
    return {
        "WG_IF": wg_if,
        "LAPTOP_ADDR": _address("laptop_addr", laptop_addr, 4),
        "API_PORT": _port("api_port", api_port),
        "RSYNC_PORT": _port("rsync_port", rsync_port),
        "JOB_UID": _uid("job_uid", job_uid),
        "JOB_SUBUIDS": _subuids(job_uid, job_subuids),
        "RESOLVERS_V4": _elements([str(a) for a in parsed if a.version == 4]),
        "RESOLVERS_V6": _elements([str(a) for a in parsed if a.version == 6]),
    }


def render_firewall(**values: object) -> str:
    """The host's nftables table ``inet flashpods``, ready for ``nft -f``.

    Keywords: wg_if, laptop_addr, api_port, rsync_port, job_uid, job_subuids (list of
    (first, last) pairs), resolvers (list).
    """
    return fill(_read(FIREWALL_TEMPLATE), firewall_values(**values))  # type: ignore[arg-type]


def rsyncd_values(
    *,
    address: str,
    port: int,
    uploads: str | Path,
    laptop_addr: str | Iterable[str],
    pid_file: str | Path,
    lock_file: str | Path,
    log_file: str | Path,
    uid: str | int,
    gid: str | int,
    use_chroot: bool,
    max_connections: int = 8,
) -> dict[str, str]:
    """The placeholder values of rsyncd.conf.in, validated."""
    if not isinstance(use_chroot, bool):
        raise RenderError(f"use_chroot must be true or false, got {use_chroot!r}")
    allowed = [laptop_addr] if isinstance(laptop_addr, str) else list(laptop_addr)
    if not allowed:
        raise RenderError("laptop_addr must name at least one client address")
    return {
        "ADDRESS": _address("address", address),
        "PORT": _port("port", port),
        "UPLOADS": _path("uploads", uploads),
        "LAPTOP_ADDR": " ".join(_address("laptop_addr", a) for a in allowed),
        "PID_FILE": _path("pid_file", pid_file),
        "LOCK_FILE": _path("lock_file", lock_file),
        "LOG_FILE": _path("log_file", log_file),
        "UID": _account("uid", uid),
        "GID": _account("gid", gid),
        "USE_CHROOT": "yes" if use_chroot else "no",
        "MAX_CONNECTIONS": _positive("max_connections", max_connections),
    }


def render_rsyncd(**values: object) -> str:
    """The rsync daemon's configuration with the single write-only module ``uploads``.

    Keywords: address, port, uploads, laptop_addr (one address or a list), pid_file,
    lock_file, log_file, uid, gid, use_chroot (True when the daemon starts as root),
    max_connections (default 8).
    """
    return fill(_read(RSYNCD_TEMPLATE), rsyncd_values(**values))  # type: ignore[arg-type]


def _nsenter(netns: str | None) -> list[str]:
    if netns is None:
        return []
    if "/" in netns or not netns:
        raise RenderError(f"netns must be a name under /run/netns, got {netns!r}")
    # Not `ip netns exec`: it remounts /sys, which breaks nft's and Podman's cgroup paths.
    return ["nsenter", f"--net=/run/netns/{netns}", "--"]


def _nft(argv: list[str], text: str, what: str) -> None:
    result = subprocess.run(argv, input=text, capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise RenderError(f"{what} failed (nft exit {result.returncode}): {result.stderr.strip()}")


def load_firewall(text: str, netns: str | None = None) -> None:
    """Load the ruleset in one transaction (in the named network namespace if given)."""
    _nft([*_nsenter(netns), "nft", "-f", "-"], text, "loading the flashpods table")


def unload_firewall(netns: str | None = None) -> None:
    """Remove the flashpods table (and nothing else); no error when it is absent."""
    text = f"table {TABLE}\ndelete table {TABLE}\n"
    _nft([*_nsenter(netns), "nft", "-f", "-"], text, "removing the flashpods table")


def check_firewall(text: str) -> None:
    """Check the ruleset with ``nft -c`` in a fresh, throwaway network namespace.

    Needs root (or CAP_SYS_ADMIN for unshare); raises RenderError with nft's message.
    """
    _nft(
        ["unshare", "--net", "--", "nft", "-c", "-f", "-"],
        text,
        "checking the flashpods table",
    )
