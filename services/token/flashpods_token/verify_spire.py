"""SPIRE mode: verify a JWT-SVID exactly as SPIRE issues them.

SPIRE signs JWT-SVIDs with ES256 (P-256 keys, the default), ES384 (P-384) or RS256
(RSA keys), puts the key id in the header (`kid`, `typ: JWT`), and sets the claims
`sub` (SPIFFE ID), `aud` (a list), `exp` and `iat` (optionally `jti`, `iss`). Keys come
from the trust bundle: a JWKS exported with `spire-server bundle show -format spiffe`,
in which JWT keys say `use: jwt-svid` next to X.509 keys without a `kid` (the Workload
API's FetchJWTBundles returns keys without `use`: filter on `use` only where present).

The accepted algorithms are fixed here and tied to the key's type: never taken from
the token; `none` and HS* are always refused. Every failure names the check.
"""

from __future__ import annotations

import json
import os
import select
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from .identity import IdentityError, JobIdentity, parse_spiffe_id
from .podman import PodmanClient, PodmanError, is_live_job, labels_of

EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
ALLOWED_ALGORITHMS = frozenset(EC_ALGORITHMS.values()) | frozenset(RSA_ALGORITHMS)
MIN_RSA_BITS = 2048  # SPIRE refuses smaller RSA keys too
T = TypeVar("T")


class VerificationError(Exception):
    """The SVID is not acceptable; `check` names the check that failed."""

    def __init__(self, check: str, message: str):
        super().__init__(message)
        self.check = check


@dataclass(frozen=True)
class VerifiedSvid:
    identity: JobIdentity
    expires_at: int


@dataclass(frozen=True)
class BundleKey:
    kid: str
    key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey
    algorithms: tuple[str, ...]


def parse_jwks(document: object) -> dict[str, BundleKey]:
    """JWT keys of a SPIFFE bundle / JWKS, by kid. Unusable entries are skipped."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("bundle is not a JWKS object with a 'keys' list")
    keys: dict[str, BundleKey] = {}
    for jwk in document["keys"]:
        if not isinstance(jwk, dict):
            continue
        if "use" in jwk and jwk["use"] != "jwt-svid":
            continue  # an X.509 authority in a server-exported bundle
        kid = jwk.get("kid")
        if not isinstance(kid, str) or not kid:
            continue
        text = json.dumps(jwk)
        try:
            if jwk.get("kty") == "EC":
                key = ECAlgorithm.from_jwk(text)
                if not isinstance(key, ec.EllipticCurvePublicKey):
                    continue  # a private key in a bundle is a mistake: never use it
                alg = EC_ALGORITHMS.get(key.curve.name)
                if alg is None:
                    continue
                keys[kid] = BundleKey(kid, key, (alg,))
            elif jwk.get("kty") == "RSA":
                rsa_key = RSAAlgorithm.from_jwk(text)
                if not isinstance(rsa_key, rsa.RSAPublicKey) or rsa_key.key_size < MIN_RSA_BITS:
                    continue
                keys[kid] = BundleKey(kid, rsa_key, RSA_ALGORITHMS)
        except (jwt.InvalidKeyError, ValueError, KeyError, TypeError):
            continue
    return keys


class BundleKeys(Protocol):
    """Where the JWT keys come from: BundleFile or workload_bundle.WorkloadApiBundle."""

    def keys(self) -> dict[str, BundleKey]: ...


class BundleFile:
    """JWT keys from a bundle file, reloaded whenever the file changes (rotation)."""

    def __init__(self, path: str):
        self._path = path
        self._stamp: tuple[int, int, int] | None = None
        self._keys: dict[str, BundleKey] = {}
        self._lock = threading.Lock()
        self.keys()  # fail at startup on an unreadable bundle

    def keys(self) -> dict[str, BundleKey]:
        try:
            st = os.stat(self._path)
        except OSError as exc:
            if self._stamp is None:
                raise ValueError(f"bundle file {self._path}: {exc.strerror}") from None
            return self._keys  # keep the last good bundle while the file is replaced
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        with self._lock:
            if stamp != self._stamp:
                try:
                    with open(self._path, "rb") as fh:
                        keys = parse_jwks(json.load(fh))
                except (OSError, ValueError) as exc:
                    if self._stamp is None:
                        raise ValueError(f"bundle file {self._path}: {exc}") from None
                    return self._keys  # half-written file: keep the last good bundle
                self._keys, self._stamp = keys, stamp
            return self._keys


class SpireVerifier:
    def __init__(
        self,
        bundle: BundleKeys,
        trust_domain: str,
        audience: str,
        leeway_s: int,
        podman: PodmanClient | None,
        exclusive_of: frozenset[str] = frozenset(),
    ) -> None:
        self._bundle = bundle
        # Audiences of the other Flashpods services: an SVID that also names one of them
        # was minted for that service and is refused here (no replay between them).
        self._exclusive_of = exclusive_of - {audience}
        self._trust_domain = trust_domain
        self._audience = audience
        self._leeway = leeway_s
        self._podman = podman
        self._liveness = JobLiveness(podman, podman.instance) if podman else None

    def verify_token(self, token: str) -> VerifiedSvid:
        """Signature, algorithm, kid, aud, exp, sub: everything except job liveness."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise VerificationError("format", "the bearer token is not a JWT") from None
        alg = header.get("alg")
        if alg not in ALLOWED_ALGORITHMS:
            raise VerificationError(
                "algorithm", "the token's algorithm is not one SPIRE signs with"
            )
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise VerificationError("kid", "the token has no key id")
        key = self._bundle.keys().get(kid)
        if key is None:
            raise VerificationError("kid", "the token's key id is not in the trust bundle")
        if alg not in key.algorithms:
            raise VerificationError("algorithm", "the token's algorithm does not fit its key")
        try:
            claims = jwt.decode(
                token,
                key=key.key,
                algorithms=[alg],
                audience=self._audience,
                leeway=self._leeway,
                options={"require": ["exp", "aud", "sub"], "verify_signature": True},
            )
        except jwt.InvalidSignatureError:
            raise VerificationError("signature", "the signature does not verify") from None
        except jwt.ExpiredSignatureError:
            raise VerificationError("exp", "the SVID has expired") from None
        except jwt.ImmatureSignatureError:
            raise VerificationError("not_before", "the SVID is not yet valid") from None
        except jwt.InvalidAudienceError:
            raise VerificationError("audience", f"aud does not contain {self._audience}") from None
        except jwt.MissingRequiredClaimError as exc:
            check = {"aud": "audience", "exp": "exp"}.get(exc.claim, "claims")
            raise VerificationError(check, f"the SVID has no {exc.claim} claim") from None
        except jwt.InvalidTokenError as exc:
            reason = type(exc).__name__
            raise VerificationError("format", f"the token is malformed ({reason})") from None
        aud = claims.get("aud")
        named = {aud} if isinstance(aud, str) else set(aud if isinstance(aud, list) else ())
        foreign = sorted(named & self._exclusive_of)
        if foreign:
            raise VerificationError(
                "audience", f"aud also names {foreign[0]}: an SVID for that service is no good here"
            )
        try:
            identity = parse_spiffe_id(self._trust_domain, claims.get("sub"))
        except IdentityError as exc:
            check = "trust_domain" if "trust domain" in str(exc) else "sub"
            raise VerificationError(check, str(exc)) from None
        return VerifiedSvid(identity, int(claims["exp"]))

    def with_job_init(self, job_id: str, fn: Callable[[int], T]) -> T | None:
        """fn(pidfd of the running job's container init), or None if it is not known to
        be running (call after verify)."""
        return self._liveness.with_init(job_id, fn) if self._liveness else None

    def verify(self, token: str) -> VerifiedSvid:
        svid = self.verify_token(token)
        if self._liveness is not None:
            kind = self._liveness.kind_if_running(svid.identity.job_id)
            # The role is the job's kind (identity.ROLES).
            if kind != svid.identity.role:
                raise VerificationError("job_role", "the SVID's role does not match the job's kind")
        return svid


class JobLiveness:
    """Is the job's container running? Podman answers once; then a pidfd of the
    container's init answers (it polls readable the moment that process exits, which
    is the moment the container stops), so a hot exchange costs no Podman call and a
    finished job is refused as soon as it ends, as with asking Podman every time."""

    def __init__(self, podman: PodmanClient, instance: str):
        self._podman = podman
        self._instance = instance
        self._lock = threading.Lock()
        self._jobs: dict[str, tuple[int, str]] = {}  # job id -> (init pidfd, kind)
        self._dead: set[str] = set()

    def with_init(self, job_id: str, fn: Callable[[int], T]) -> T | None:
        with self._lock:  # the pidfd stays open while fn uses it
            cached = self._jobs.get(job_id)
            if cached is None or _exited(cached[0]):
                return None
            return fn(cached[0])

    def kind_if_running(self, job_id: str) -> str:
        with self._lock:
            cached = self._jobs.get(job_id)
            if cached and not _exited(cached[0]):
                return cached[1]
            if cached:
                # Job ids are never reused: a job seen ending stays dead, even if a
                # container is re-created under its name while its SVID is unexpired.
                os.close(self._jobs.pop(job_id)[0])
                self._dead.add(job_id)
            if job_id in self._dead:
                raise VerificationError("job_running", "the job has ended")
        try:
            data = self._podman.inspect(job_id)
        except PodmanError as exc:
            raise VerificationError("job_running", f"cannot ask Podman: {exc}") from None
        if not data or not is_live_job(data, self._instance, job_id):
            raise VerificationError("job_running", "the job is not running")
        pid: Any = (data.get("State") or {}).get("Pid")  # checked by int() below
        kind = labels_of(data).get("flashpods.kind", "")
        try:
            pidfd = os.pidfd_open(int(pid))
        except (OSError, TypeError, ValueError):
            raise VerificationError("job_running", "the job is not running") from None
        # The pid could have been reused between inspect and open: ask once more.
        try:
            again = self._podman.inspect(job_id)
        except PodmanError:
            again = None
        if not again or not is_live_job(again, self._instance, job_id, pid=pid):
            os.close(pidfd)
            raise VerificationError("job_running", "the job is not running")
        with self._lock:
            old = self._jobs.pop(job_id, None)
            if old:
                os.close(old[0])
            for other, (fd, _k) in list(self._jobs.items()):
                if _exited(fd):  # forget ended jobs while we are here
                    os.close(self._jobs.pop(other)[0])
                    self._dead.add(other)
            self._jobs[job_id] = (pidfd, kind)
        return kind


def _exited(pidfd: int) -> bool:
    return bool(select.select([pidfd], [], [], 0)[0])
