"""Which job is calling the credential proxy, in spire mode: the job's JWT-SVID.

Peer mode needs nothing here: the proxy asks the token service's PeerAttestor about
the connection itself before a byte is read. Spire mode has no CAP_SYS_PTRACE, so the
connection proves nothing; the job presents its own JWT-SVID instead, as
`Proxy-Authorization: Bearer <JWT-SVID>`:

- on a CONNECT, in the CONNECT's own head (flashpods-init's relay adds it to every
  connection it relays: docs/design.md, "Credential proxy");
- on a TLS connection opened straight away (`curl --unix-socket`), in the head of the
  request inside the TLS (`-H "Proxy-Authorization: Bearer $SVID"`).

The header is never passed upstream (proxy.HOP_HEADERS). The SVID is verified exactly
as the token service verifies its own (verify_spire.SpireVerifier: the bundle's keys,
the algorithm tied to the key, exp, the SPIFFE ID's shape, the job's container running
and of the SVID's kind), but for the audience `flashpods-proxy`. An SVID that names the
token service's audience as well is refused here, and one naming this audience is
refused by the token service: an SVID minted for one is never accepted by the other.

A JWT-SVID is a bearer token: whoever holds it is its job until it expires. So the
proxy also checks where it comes from: the connection's peer (its top PID namespace
below the proxy's, or its cgroup: peer_key.py) must be the SVID's job's container
(the same key of that container's init). Another job replaying an SVID it got hold of
is refused (`peer_container`). Where the kernel names neither (no CAP_SYS_PTRACE and
cgroup v1: every rootless container shares one cgroup), this check cannot tell jobs
apart, and the SVID alone decides.
"""

from __future__ import annotations

import socket

from .attest_peer import AttestationError
from .identity import JobIdentity
from .peer_key import PeerKeys
from .verify_spire import BundleKeys, SpireVerifier, VerificationError

PROXY_AUDIENCE = "flashpods-proxy"
HEADER = "proxy-authorization"
HOW = f"send Proxy-Authorization: Bearer <the job's JWT-SVID for audience {PROXY_AUDIENCE}>"


class SvidAttestor:
    """The job of one request head, from the JWT-SVID it carries."""

    def __init__(self, verifier: SpireVerifier, bundle: BundleKeys | None = None):
        self._verifier = verifier
        self._bundle = bundle  # closed with us (a Workload API stream)
        self._keys = PeerKeys()

    def connection(self, conn: socket.socket) -> JobIdentity | None:
        """Nothing is known from the connection: the identity comes with the head."""
        return None

    def head(self, headers: list[tuple[str, str]], peer: str | None) -> JobIdentity:
        """The SVID's job, if the SVID is good and comes from that job's container (peer:
        the connection's key from peer_key.PeerKeys, taken when it was accepted)."""
        values = [value for name, value in headers if name.lower() == HEADER]
        if not values:
            raise AttestationError("authorization", f"no JWT-SVID: {HOW}")
        if len(values) > 1:
            raise AttestationError(
                "authorization", f"{len(values)} Proxy-Authorization headers: {HOW}, once"
            )
        scheme, _, token = values[0].strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AttestationError("authorization", f"Proxy-Authorization is not Bearer: {HOW}")
        try:
            ident = self._verifier.verify(token.strip()).identity
        except VerificationError as exc:
            raise AttestationError(exc.check, f"JWT-SVID refused ({exc.check}): {exc}") from None
        theirs = self._verifier.with_job_init(ident.job_id, self._keys.of_pidfd)
        if peer is not None and theirs is not None and peer != theirs:
            raise AttestationError(
                "peer_container",
                f"JWT-SVID refused (peer_container): it is job {ident.job_id}'s, and this "
                "connection comes from outside that job's container; send your own job's SVID",
            )
        return ident

    def close(self) -> None:
        close = getattr(self._bundle, "close", None)
        if close is not None:
            close()
