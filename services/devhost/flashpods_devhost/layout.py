"""The dev host's directory tree under one root, with the owners and modes of docs/design.md."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from .accounts import Account, Accounts

ROOT_UID = 0


@dataclass(frozen=True)
class Paths:
    root: Path

    @property
    def etc(self) -> Path:
        return self.root / "etc"

    @property
    def api_token(self) -> Path:
        return self.etc / "api-token"

    @property
    def secrets_dir(self) -> Path:
        return self.etc / "secrets"

    @property
    def api_config(self) -> Path:
        return self.etc / "api.json"

    @property
    def token_config(self) -> Path:
        return self.etc / "token.json"

    @property
    def rsyncd_config(self) -> Path:
        return self.etc / "rsyncd.conf"

    @property
    def db_dir(self) -> Path:
        return self.root / "db"

    @property
    def db(self) -> Path:
        return self.db_dir / "flashpods.db"

    @property
    def uploads(self) -> Path:
        return self.root / "uploads"

    @property
    def workspaces(self) -> Path:
        return self.root / "workspaces"

    @property
    def control(self) -> Path:
        """Warm containers' hand-over dirs: the API writes, jobs read; its parent is root's."""
        return self.root / "control"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def logs(self) -> Path:
        """Job logs (served by the API)."""
        return self.root / "logs"

    @property
    def service_logs(self) -> Path:
        """stdout/stderr of the dev host's own services."""
        return self.root / "log"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def podman_socket(self) -> Path:
        return self.run / "podman" / "podman.sock"

    @property
    def token_socket(self) -> Path:
        return self.run / "token" / "token.sock"

    @property
    def api_runtime(self) -> Path:
        """XDG_RUNTIME_DIR of the API user (the Podman remote client wants one)."""
        return self.run / "api"

    @property
    def token_runtime(self) -> Path:
        """XDG_RUNTIME_DIR of the token user (peer mode asks Podman about containers)."""
        return self.run / "token-runtime"

    @property
    def api_home(self) -> Path:
        return self.root / "home" / "api"

    @property
    def token_home(self) -> Path:
        return self.root / "home" / "token"

    @property
    def token_state(self) -> Path:
        return self.root / "state" / "token"

    @property
    def usage(self) -> Path:
        """The credential proxy's per-job model usage (written by it, read by the API)."""
        return self.root / "state" / "usage"

    @property
    def budgets(self) -> Path:
        """Per-job model budgets: written by the API, read by the proxy, never by a job."""
        return self.root / "state" / "budgets"

    @property
    def audit_log(self) -> Path:
        return self.token_state / "audit.log"

    def service_log(self, name: str) -> Path:
        return self.service_logs / f"{name}.log"


class Layout:
    """Creates the tree idempotently: a restart on the same root keeps the DB and the token."""

    def __init__(self, paths: Paths, accounts: Accounts) -> None:
        self.paths = paths
        self.accounts = accounts

    def _own(self, path: Path, uid: int, gid: int, mode: int) -> None:
        if self.accounts.separated:
            os.chown(path, uid, gid, follow_symlinks=False)
        os.chmod(path, mode)

    def _dir(self, path: Path, owner: Account | None, gid: int | None, mode: int) -> None:
        path.mkdir(parents=True, exist_ok=True)
        uid = owner.uid if owner else ROOT_UID
        self._own(path, uid, gid if gid is not None else (owner.gid if owner else 0), mode)

    def create(self) -> None:
        p, a = self.paths, self.accounts
        api, token, podman, sandbox = a.api, a.token, a.podman, a.sandbox_gid
        # Every service user must traverse the root (design.md: world-traversable roots).
        for parent in reversed(p.root.parents):
            if not parent.exists():
                parent.mkdir(mode=0o755)
        self._dir(p.root, None, None, 0o755)
        self._dir(p.etc, None, None, 0o755)
        self._dir(p.secrets_dir, token, None, 0o700)
        self._dir(p.db_dir, api, None, 0o700)
        for shared in (p.uploads, p.workspaces, p.artifacts, p.logs):
            self._dir(shared, api, sandbox, 0o2770)
        self._dir(p.uploads / ".bases", api, sandbox, 0o2750)
        self._dir(p.control, api, sandbox, 0o2750)
        self._dir(p.service_logs, None, None, 0o755)
        self._dir(p.run, None, None, 0o755)
        self._dir(p.podman_socket.parent, podman, sandbox, 0o750)
        self._dir(p.token_socket.parent, token, sandbox, 0o750)
        self._dir(p.api_runtime, api, None, 0o700)
        self._dir(p.token_runtime, token, None, 0o700)
        self._dir(p.root / "home", None, None, 0o755)
        self._dir(p.api_home, api, None, 0o700)
        self._dir(p.token_home, token, None, 0o700)
        self._dir(p.root / "state", None, None, 0o755)
        self._dir(p.token_state, token, None, 0o700)
        self._dir(p.usage, token, sandbox, 0o2750)
        # The API's, group of the token user (setgid: the API's files get that group),
        # nothing for group flashpods: jobs can neither write nor read a budget.
        self._dir(p.budgets, api, token.gid, 0o2750)
        runtime = a.runtime_dir(podman)
        if a.separated and not runtime.exists():
            self._dir(runtime, podman, None, 0o700)

    def api_token(self) -> str:
        """The API's bearer token: kept across restarts so clients stay configured."""
        path = self.paths.api_token
        if path.exists() and path.read_text().strip():
            value = path.read_text().strip()
        else:
            value = secrets.token_urlsafe(32)
            self._write(path, value + "\n")
        self._own(path, self.accounts.api.uid, self.accounts.api.gid, 0o400)
        return value

    def write_secrets(self, values: dict[str, str]) -> dict[str, str]:
        """One file per secret, readable by the token user only. Returns name -> path."""
        token = self.accounts.token
        written = {}
        for name, value in values.items():
            if not name or "/" in name or name.startswith("."):
                raise ValueError(f"secret name {name!r} is not a plain file name: rename it")
            path = self.paths.secrets_dir / name
            self._write(path, value)
            self._own(path, token.uid, token.gid, 0o400)
            written[name] = str(path)
        return written

    def write_public(self, path: Path, text: str) -> None:
        """Config files hold no secrets (only paths to them): root-owned, world-readable."""
        self._write(path, text)
        self._own(path, ROOT_UID if self.accounts.separated else os.getuid(), 0, 0o644)

    @staticmethod
    def _write(path: Path, text: str) -> None:
        # Temp file + rename so a half-written file is never read; 0600 until chowned.
        tmp = path.with_name(f".{path.name}.tmp")
        if tmp.exists():
            tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        if path.exists():
            os.chmod(path, 0o600)
        os.replace(tmp, path)
