"""Per-job SPIRE registration entries, driven through the real `spire-server` CLI.

The API calls `register(job_id, kind)` before it starts a job's container (a job whose
entry cannot be created fails with the RegistrarError's sentence and never runs
without identity), `unregister(job_id)` when the job is final, and `sweep(live)` on
reconcile so entries of jobs that ended while the API was down are deleted too.

Flags and output shapes are those of spiffe/spire's `cmd/spire-server/cli/entry`:
`entry create -parentID -spiffeID -selector... -jwtSVIDTTL -socketPath -output json`
prints `{"results": [{"status": {"code", "message"}, "entry": {"id", ...}}]}`;
`entry show ... -output json` prints `{"entries": [{"id", "spiffe_id": {"trust_domain",
"path"}, ...}], ...}`; `entry delete -entryID X -output json` prints `{"results":
[{"status": {...}, "id": X}]}`. Status codes are gRPC codes (0 OK, 5 NotFound,
6 AlreadyExists); with -output json the CLI exits 0 even when a result failed, so
the codes are checked here.

The selectors are those the flashpods workload attestor plugin answers for a process of
a live job container (docs/spire.md): `flashpods:job:<id>`, `flashpods:kind:<kind>`,
`flashpods:instance:<instance>`; an entry matches only when all three do.

In `peer` mode (dev host, no SPIRE) the token service attests callers from the
kernel, so there is nothing to register: the registrar is a no-op.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from typing import Any, Protocol

_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_ROLE_OF_KIND = {"worker": "worker", "sub_agent": "sub_agent"}
_OK, _NOT_FOUND, _ALREADY_EXISTS = 0, 5, 6


class RegistrarError(Exception):
    """A sentence saying why a job's identity could not be set up or removed."""


class Registrar(Protocol):
    """What the API and the reaper need of a registrar (SpireRegistrar, NoopRegistrar)."""

    def register(self, job_id: str, kind: str) -> None: ...
    def unregister(self, job_id: str) -> None: ...
    def sweep(self, live_job_ids: set[str]) -> None: ...


class NoopRegistrar:
    """peer mode: identity comes from the kernel, nothing to register."""

    def register(self, job_id: str, kind: str) -> None:
        _check(job_id, kind)

    def unregister(self, job_id: str) -> None:
        pass

    def sweep(self, live_job_ids: set[str]) -> None:
        pass


def _check(job_id: str, kind: str | None = None) -> str | None:
    if not isinstance(job_id, str) or not _JOB_ID.match(job_id):
        raise RegistrarError(f"job id {job_id!r} is not valid for a SPIFFE ID")
    if kind is None:
        return None
    role = _ROLE_OF_KIND.get(kind)
    if role is None:
        raise RegistrarError(f"job kind {kind!r} is neither worker nor sub_agent")
    return role


@dataclass
class SpireRegistrar:
    server_cli: str
    server_socket: str
    trust_domain: str
    parent_id: str
    jwt_svid_ttl_s: int = 300
    timeout_s: float = 30.0
    instance: str = "dev"

    # -- the CLI ---------------------------------------------------------------------

    def _run(self, *args: str) -> dict[str, Any]:
        argv = [
            self.server_cli,
            "entry",
            *args,
            "-socketPath",
            self.server_socket,
            "-output",
            "json",
        ]
        try:
            proc = subprocess.run(
                argv, capture_output=True, text=True, timeout=self.timeout_s, check=False
            )
        except FileNotFoundError:
            raise RegistrarError(
                f"spire-server CLI {self.server_cli!r} not found; set spire.server_cli"
            ) from None
        except subprocess.TimeoutExpired:
            raise RegistrarError(
                f"spire-server entry {args[0]} did not answer within {self.timeout_s:.0f} s"
            ) from None
        if proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip().splitlines()
            raise RegistrarError(
                f"spire-server entry {args[0]} failed (exit {proc.returncode}): "
                f"{detail[-1] if detail else 'no output'}"
            )
        try:
            out = json.loads(proc.stdout or "{}")
        except json.JSONDecodeError:
            raise RegistrarError(
                f"spire-server entry {args[0]} did not print JSON (is it older than -output json?)"
            ) from None
        if not isinstance(out, dict):
            raise RegistrarError(f"spire-server entry {args[0]} printed an unexpected shape")
        return out

    def spiffe_id(self, job_id: str, role: str) -> str:
        return f"spiffe://{self.trust_domain}/job/{job_id}/{role}"

    def _selector(self, job_id: str) -> str:
        return f"flashpods:job:{job_id}"

    def _selectors(self, job_id: str, kind: str) -> list[str]:
        return [
            self._selector(job_id),
            f"flashpods:kind:{kind}",
            f"flashpods:instance:{self.instance}",
        ]

    def _entries_of(self, job_id: str) -> list[str]:
        out = self._run("show", "-selector", self._selector(job_id))
        prefix = f"/job/{job_id}/"
        return [
            e["id"]
            for e in out.get("entries") or []
            if (e.get("spiffe_id") or {}).get("trust_domain") == self.trust_domain
            and str((e.get("spiffe_id") or {}).get("path", "")).startswith(prefix)
        ]

    def _delete(self, entry_id: str) -> None:
        out = self._run("delete", "-entryID", entry_id)
        for result in out.get("results") or []:
            code = (result.get("status") or {}).get("code", _OK)
            if code not in (_OK, _NOT_FOUND):  # gone already: fine, deletes are idempotent
                msg = (result.get("status") or {}).get("message", "")
                raise RegistrarError(f"spire-server could not delete entry {entry_id}: {msg}")

    # -- the interface ---------------------------------------------------------------

    def register(self, job_id: str, kind: str) -> None:
        role = _check(job_id, kind)
        assert role is not None  # _check returns the role of the kind it was given
        out = self._run(
            "create",
            "-parentID", self.parent_id,
            "-spiffeID", self.spiffe_id(job_id, role),
            *[arg for sel in self._selectors(job_id, kind) for arg in ("-selector", sel)],
            "-jwtSVIDTTL", str(int(self.jwt_svid_ttl_s)),
        )  # fmt: skip
        results = out.get("results") or []
        if not results:
            raise RegistrarError(f"spire-server created no entry for job {job_id}")
        for result in results:
            status = result.get("status") or {}
            code = status.get("code", _OK)
            if code == _ALREADY_EXISTS:
                continue  # a retry after a crash: the entry is there, which is what we want
            if code != _OK:
                raise RegistrarError(
                    f"spire-server refused the entry for job {job_id}: "
                    f"{status.get('message', 'code ' + str(code))}"
                )

    def unregister(self, job_id: str) -> None:
        _check(job_id)
        for entry_id in self._entries_of(job_id):
            self._delete(entry_id)

    def sweep(self, live_job_ids: set[str]) -> None:
        out = self._run("show", "-parentID", self.parent_id)
        # /agent: entries made before the role was spelled sub_agent are swept too.
        pattern = re.compile(r"^/job/([^/]+)/(worker|sub_agent|agent)$")
        for e in out.get("entries") or []:
            sid = e.get("spiffe_id") or {}
            m = pattern.match(str(sid.get("path", "")))
            if sid.get("trust_domain") != self.trust_domain or not m:
                continue  # not one of ours
            if m.group(1) not in live_job_ids:
                self._delete(e["id"])


def make_registrar(config: Any) -> SpireRegistrar | NoopRegistrar:
    """The registrar for an API config (its `attestation` and `spire` keys): the JSON dict,
    or the API's Config object, whose `.raw` is that dict."""
    config = getattr(config, "raw", config)
    if config.get("attestation", "peer") != "spire":
        return NoopRegistrar()
    spire = config.get("spire") or {}
    missing = [k for k in ("server_socket", "trust_domain", "parent_id") if not spire.get(k)]
    if missing:
        raise RegistrarError(f"attestation is spire but spire.{missing[0]} is not set")
    return SpireRegistrar(
        server_cli=spire.get("server_cli") or "spire-server",
        server_socket=spire["server_socket"],
        trust_domain=spire["trust_domain"],
        parent_id=spire["parent_id"],
        jwt_svid_ttl_s=int(spire.get("jwt_svid_ttl_s") or 300),
        instance=str(config.get("instance") or "dev"),
    )
