"""Which host account runs which service (docs/design.md, "Host users and groups")."""

from __future__ import annotations

import grp
import os
import pwd
import sys
from dataclasses import dataclass
from pathlib import Path

PODMAN_USER = "flashpods"
API_USER = "flashpods-api"
TOKEN_USER = "flashpods-token"
SANDBOX_GROUP = "flashpods"

WEAK_BOUNDARY_WARNING = (
    "flashpods-devhost: not running as root, so the API, the token service and every job "
    "container run as the same user ({user}). A process that escapes a container can read "
    "the API token and the secrets. Run as root for the real user boundary."
)


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    home: Path

    @classmethod
    def named(cls, name: str) -> Account:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise RuntimeError(
                f"user {name!r} does not exist: run scripts/lib/users.sh (as root) to create the "
                "Flashpods users"
            ) from None
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir))

    @classmethod
    def current(cls) -> Account:
        entry = pwd.getpwuid(os.getuid())
        return cls(entry.pw_name, entry.pw_uid, os.getgid(), Path(entry.pw_dir))


SUBUID_FILE = Path("/etc/subuid")


def subordinate_ids(account: Account, path: Path = SUBUID_FILE) -> list[tuple[int, int]]:
    """The account's subordinate id ranges, (first, last) inclusive, as newuidmap sees them.

    shadow's newuidmap matches a line by user name or by numeric uid, so both count: a
    process of the account can map itself to any of them (rootless Podman's `--user 1`
    does), and the firewall must hold every one of them to the job rules.
    """
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    ranges = []
    for number, line in enumerate(lines, 1):
        fields = line.strip().split(":")
        if (
            not fields[0]
            or fields[0].startswith("#")
            or fields[0]
            not in (
                account.name,
                str(account.uid),
            )
        ):
            continue
        try:
            first, count = int(fields[1]), int(fields[2])
        except (IndexError, ValueError):
            raise RuntimeError(
                f"{path}:{number} is not 'name:first:count': {line!r}; fix or remove the line"
            ) from None
        if count > 0:
            ranges.append((first, first + count - 1))
    return sorted(ranges)


@dataclass(frozen=True)
class Accounts:
    """The three service accounts plus the group that may drive the sandbox."""

    podman: Account
    api: Account
    token: Account
    sandbox_group: str
    sandbox_gid: int
    # True when we are root and really switch users; False = everything runs as the caller.
    separated: bool

    @classmethod
    def resolve(cls) -> Accounts:
        if os.geteuid() == 0:
            try:
                group = grp.getgrnam(SANDBOX_GROUP)
            except KeyError:
                raise RuntimeError(
                    f"group {SANDBOX_GROUP!r} does not exist: run scripts/lib/users.sh as root"
                ) from None
            return cls(
                podman=Account.named(PODMAN_USER),
                api=Account.named(API_USER),
                token=Account.named(TOKEN_USER),
                sandbox_group=group.gr_name,
                sandbox_gid=group.gr_gid,
                separated=True,
            )
        me = Account.current()
        print(WEAK_BOUNDARY_WARNING.format(user=me.name), file=sys.stderr)
        return cls(
            podman=me,
            api=me,
            token=me,
            sandbox_group=grp.getgrgid(me.gid).gr_name,
            sandbox_gid=me.gid,
            separated=False,
        )

    def runtime_dir(self, account: Account) -> Path:
        """XDG_RUNTIME_DIR for rootless Podman (no logind here: /run/user/<uid> is made by hand)."""
        if not self.separated and os.environ.get("XDG_RUNTIME_DIR"):
            return Path(os.environ["XDG_RUNTIME_DIR"])
        return Path(f"/run/user/{account.uid}")
