"""The exchange itself, independent of HTTP: attest, rate-limit, apply policy, audit.

`TokenService.exchange` takes what the HTTP layer read from one request and returns
(status, body object or text lines). It never puts a secret value into an error.
"""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .audit import AuditLog
from .identity import TOKEN_NAME_RE, JobIdentity
from .policy import Policy, SecretUnavailable
from .ratelimit import RateLimiter


class Refusal(Exception):
    """Attestation failed: maps to 401 (or 429 for check 'rate_limit')."""

    def __init__(self, check: str, message: str):
        super().__init__(message)
        self.check = check


@dataclass
class Caller:
    identity: JobIdentity
    expires_at: int | None = None


@dataclass
class Reply:
    status: int
    body: dict | None = None
    text: str | None = None
    headers: dict = field(default_factory=dict)

    def payload(self) -> tuple[bytes, str]:
        if self.text is not None:
            return self.text.encode("ascii"), "text/plain; charset=us-ascii"
        return json.dumps(self.body).encode("utf-8") + b"\n", "application/json"


def error(status: int, code: str, message: str, **extra: Any) -> Reply:
    return Reply(status, {"error": message, "code": code, **extra})


def parse_wanted(body: bytes) -> list[str] | None:
    """The token names a request asks for (None = all the role allows); ValueError if bad."""
    if not body.strip():
        return None
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError('the body must be JSON like {"tokens": ["NAME", ...]}') from None
    if not isinstance(data, dict) or set(data) - {"tokens"}:
        raise ValueError('the body may only have the key "tokens"')
    tokens = data.get("tokens")
    if tokens is None:
        return None
    if not isinstance(tokens, list) or len(tokens) > 64:
        raise ValueError('"tokens" must be a list of at most 64 token names')
    for name in tokens:
        if not isinstance(name, str) or not TOKEN_NAME_RE.match(name):
            raise ValueError(f"token names must match {TOKEN_NAME_RE.pattern}")
    return tokens


def _names_asked_for(body: bytes) -> list[str]:
    """For the audit line of a refused caller: what it asked for, if that parses."""
    try:
        return parse_wanted(body) or []
    except ValueError:
        return []


class TokenService:
    def __init__(
        self,
        mode: str,
        policy: Policy,
        audit: AuditLog,
        limiter: RateLimiter,
        attest: Callable[..., Caller],
    ):
        self.mode = mode
        self._policy = policy
        self._audit = audit
        self._limiter = limiter
        self._attest = attest

    def reopen_audit(self) -> None:
        self._audit.reopen()

    def exchange(
        self,
        *,
        connection: socket.socket,
        authorization: str | None,
        body: bytes,
        text: bool,
        peer: str | None = None,
    ) -> Reply:
        # Attest first: every failure after this is charged to (and rate-limited for)
        # the job that caused it, in the audit log too.
        try:
            caller = self._attest(connection=connection, authorization=authorization)
        except Refusal as exc:
            if exc.check == "rate_limit":
                self._audit.record(
                    outcome="rate_limited", check=exc.check, mode=self.mode, peer=peer
                )
                return error(429, "rate_limited", str(exc), check=exc.check)
            self._audit.record(
                outcome="unauthenticated",
                refused=_names_asked_for(body),
                check=exc.check,
                mode=self.mode,
                peer=peer,
            )
            return error(401, "unauthenticated", f"{exc.check}: {exc}", check=exc.check)

        ident = caller.identity
        allowed, wait = self._limiter.allow(ident.spiffe_id)
        if not allowed:
            self._audit.record(
                outcome="rate_limited",
                spiffe_id=ident.spiffe_id,
                job=ident.job_id,
                check="rate_limit",
                mode=self.mode,
            )
            reply = error(429, "rate_limited", "too many exchanges for this identity; retry later")
            reply.headers["Retry-After"] = str(max(1, round(wait)))
            return reply

        try:
            wanted = parse_wanted(body)
        except ValueError as exc:
            self._audit.record(
                outcome="bad_request",
                spiffe_id=ident.spiffe_id,
                job=ident.job_id,
                check="body",
                mode=self.mode,
            )
            return error(400, "bad_request", str(exc))

        decision = self._policy.decide(ident.role, wanted)
        if decision.refused:
            self._audit.record(
                outcome="forbidden",
                spiffe_id=ident.spiffe_id,
                job=ident.job_id,
                refused=decision.refused,
                check="policy",
                mode=self.mode,
            )
            return error(
                403,
                "forbidden",
                f"role {ident.role} may not have {', '.join(decision.refused)}",
                refused=decision.refused,
            )

        values: dict[str, str] = {}
        try:
            for name in decision.granted:
                values[name] = self._policy.value_for(name, ident.job_id)
        except SecretUnavailable as exc:
            self._audit.record(
                outcome="unavailable",
                spiffe_id=ident.spiffe_id,
                job=ident.job_id,
                refused=decision.granted,
                check="secret_file",
                mode=self.mode,
            )
            return error(503, "secret_unavailable", str(exc))

        self._audit.record(
            outcome="granted",
            spiffe_id=ident.spiffe_id,
            job=ident.job_id,
            granted=decision.granted,
            mode=self.mode,
        )
        if text:
            lines = "".join(
                f"{name}={base64.b64encode(value.encode('utf-8')).decode('ascii')}\n"
                for name, value in values.items()
            )
            return Reply(200, text=lines)
        return Reply(
            200,
            {
                "spiffe_id": ident.spiffe_id,
                "job_id": ident.job_id,
                "role": ident.role,
                "tokens": values,
                "expires_at": caller.expires_at,
            },
        )
