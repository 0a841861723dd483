"""A test CA that mints tokens shaped like SPIRE's JWT-SVIDs, and the bundle to check them.

Shape (spiffe/spire pkg/server/ca and credtemplate): header {alg, kid, typ: "JWT"},
claims {sub, aud: [..], exp, iat}. The bundle is what `spire-server bundle show
-format spiffe` prints: a JWKS whose JWT keys carry `use: jwt-svid` and a `kid`, next
to X.509 authorities with `use: x509-svid`, an `x5c` chain and no `kid`.
"""

from __future__ import annotations

import base64
import datetime
import json
import time

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

TRUST_DOMAIN = "flashpods.internal"
AUDIENCE = "flashpods-token"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TestCA:
    __test__ = False  # not a test class

    def __init__(self, trust_domain: str = TRUST_DOMAIN):
        self.trust_domain = trust_domain
        self.ec_key = ec.generate_private_key(ec.SECP256R1())
        self.rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.x509_key = ec.generate_private_key(ec.SECP256R1())
        self.ec_kid = "ec-" + _b64url(time.time_ns().to_bytes(8, "big"))
        self.rsa_kid = "rsa-" + _b64url(time.time_ns().to_bytes(8, "big"))

    # -- bundle -------------------------------------------------------------------

    def _x509_authority(self) -> dict:
        name = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "US")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.x509_key.public_key())
            .serial_number(1)
            .not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(f"spiffe://{self.trust_domain}")]
                ),
                critical=False,
            )
            .sign(self.x509_key, hashes.SHA256())
        )
        jwk = json.loads(ECAlgorithm.to_jwk(self.x509_key.public_key()))
        jwk["use"] = "x509-svid"
        jwk["x5c"] = [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()]
        return jwk

    def jwt_keys(self, with_use: bool = True) -> list[dict]:
        keys = []
        for kid, pub, algo in (
            (self.ec_kid, self.ec_key.public_key(), ECAlgorithm),
            (self.rsa_kid, self.rsa_key.public_key(), RSAAlgorithm),
        ):
            jwk = json.loads(algo.to_jwk(pub))
            jwk["kid"] = kid
            if with_use:
                jwk["use"] = "jwt-svid"
            keys.append(jwk)
        return keys

    def server_bundle(self) -> dict:
        """As `spire-server bundle show -format spiffe` prints it."""
        return {
            "keys": [self._x509_authority(), *self.jwt_keys(with_use=True)],
            "spiffe_sequence": 1,
            "spiffe_refresh_hint": 60,
        }

    def workload_api_bundle(self) -> dict:
        """As the Workload API's FetchJWTBundles returns it: JWT keys without `use`."""
        return {"keys": self.jwt_keys(with_use=False)}

    # -- tokens -------------------------------------------------------------------

    def spiffe_id(self, job_id: str, role: str = "worker") -> str:
        return f"spiffe://{self.trust_domain}/job/{job_id}/{role}"

    def mint(
        self,
        sub: str,
        *,
        alg: str = "ES256",
        aud: object = (AUDIENCE,),
        ttl: int = 300,
        iat_offset: int = 0,
        kid: str | None = None,
        extra_claims: dict | None = None,
        drop: tuple[str, ...] = (),
    ) -> str:
        now = int(time.time())
        claims: dict = {"sub": sub, "exp": now + ttl, "iat": now + iat_offset}
        if aud is not None:
            claims["aud"] = list(aud) if isinstance(aud, list | tuple) else aud
        claims.update(extra_claims or {})
        for name in drop:
            claims.pop(name, None)
        if alg.startswith("ES"):
            key, default_kid = self.ec_key, self.ec_kid
        else:
            key, default_kid = self.rsa_key, self.rsa_kid
        headers = {"kid": kid or default_kid, "typ": "JWT"}
        return jwt.encode(claims, key, algorithm=alg, headers=headers)
