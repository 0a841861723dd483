"""Policy: which token names a role may have, and reading their values from files.

Values are read at exchange time (cached while the file's mtime, size and inode
stay the same), so rotating a credential file takes effect without a restart.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from .placeholder import placeholder


class SecretUnavailable(Exception):
    """A configured secret file cannot be read; the message names the token, never a value."""


@dataclass(frozen=True)
class Decision:
    granted: list[str]
    refused: list[str]


class Policy:
    def __init__(
        self,
        roles: dict[str, list[str]],
        secrets: dict[str, str],
        proxied: Iterable[str] = (),
    ):
        self._roles = {role: list(names) for role, names in roles.items()}
        self._secrets = dict(secrets)
        # Secrets the credential proxy injects: a job gets only their placeholder.
        self._proxied = frozenset(proxied)
        self._cache: dict[str, tuple[tuple[int, int, int], str]] = {}
        self._lock = threading.Lock()

    def allowed(self, role: str) -> list[str]:
        return list(self._roles.get(role, []))

    def decide(self, role: str, wanted: list[str] | None) -> Decision:
        allowed = self.allowed(role)
        if wanted is None:
            return Decision(granted=allowed, refused=[])
        wanted = list(dict.fromkeys(wanted))
        return Decision(
            granted=[n for n in wanted if n in allowed],
            refused=[n for n in wanted if n not in allowed],
        )

    def value_for(self, name: str, job_id: str) -> str:
        """What the job is handed for name: its placeholder, or (env delivery) the value."""
        if name in self._proxied:
            return placeholder(name, job_id)
        return self.read(name)

    def read(self, name: str) -> str:
        path = self._secrets[name]
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise SecretUnavailable(f"secret {name} cannot be read ({exc.strerror})") from None
        try:
            st = os.fstat(fd)
            key = (st.st_mtime_ns, st.st_size, st.st_ino)
            with self._lock:
                cached = self._cache.get(name)
            if cached and cached[0] == key:
                return cached[1]
            chunks = []
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
        finally:
            os.close(fd)
        raw = b"".join(chunks)
        # Files written with `echo` end in one newline that is not part of the value.
        if raw.endswith(b"\n"):
            raw = raw[:-1]
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise SecretUnavailable(f"secret {name} is not UTF-8 text") from None
        if not value:
            raise SecretUnavailable(f"secret {name} is empty")
        with self._lock:
            self._cache[name] = (key, value)
        return value
