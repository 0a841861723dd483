"""Wire the parts together from a TokenConfig: attestation mode, policy, audit, server."""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable

from .attest_peer import AttestationError, PeerAttestor, check_capability
from .audit import AuditLog
from .config import TokenConfig
from .exchange import Caller, Refusal, TokenService
from .podman import PodmanClient, PodmanError
from .policy import Policy
from .proxy_attest import PROXY_AUDIENCE
from .ratelimit import RateLimiter
from .server import TokenServer
from .verify_spire import BundleFile, BundleKeys, SpireVerifier, VerificationError

BEARER = "bearer "


AttestFn = Callable[..., Caller]  # (*, connection, authorization) -> Caller, or Refusal


def peer_attest_fn(attestor: PeerAttestor) -> AttestFn:
    def attest(*, connection: socket.socket, authorization: str | None) -> Caller:
        try:
            return Caller(attestor.attest(connection))
        except AttestationError as exc:
            raise Refusal(exc.check, str(exc)) from None

    return attest


def spire_attest_fn(verifier: SpireVerifier) -> AttestFn:
    def attest(*, connection: socket.socket, authorization: str | None) -> Caller:
        if not authorization or not authorization.lower().startswith(BEARER):
            raise Refusal("authorization", "send Authorization: Bearer <JWT-SVID>")
        try:
            svid = verifier.verify(authorization[len(BEARER) :].strip())
        except VerificationError as exc:
            raise Refusal(exc.check, str(exc)) from None
        return Caller(svid.identity, svid.expires_at)

    return attest


def open_bundle(config: TokenConfig, program: str) -> BundleKeys:
    """The JWT keys spire mode verifies against: a bundle file or the agent's stream."""
    try:
        if config.spire.bundle_file:
            return BundleFile(config.spire.bundle_file)
        from .workload_bundle import WorkloadApiBundle  # grpcio only when used

        agent_socket = config.spire.agent_socket
        assert agent_socket  # parse_config: spire mode has a bundle_file or this
        return WorkloadApiBundle(agent_socket, config.trust_domain)
    except ValueError as exc:
        raise SystemExit(f"{program}: {exc}") from None


def build_service(config: TokenConfig) -> tuple[TokenService, Callable[[], None]]:
    """The exchange service for this config, and a function that releases what it holds."""
    podman = PodmanClient(config.podman_url, config.instance)
    policy = Policy(config.roles, config.secrets, config.proxy.rules if config.proxy else ())
    audit = AuditLog(
        config.audit_log,
        failures_per_window=config.limits.audit_failures_per_window,
        window_s=config.limits.audit_window_s,
    )
    audit.start_flusher()
    limiter = RateLimiter(config.rate_limit.per_s, config.rate_limit.burst)
    if config.mode == "peer":
        check_capability(config.podman_url[len("unix://") :])
        attestor = PeerAttestor(
            podman,
            config.trust_domain,
            config.instance,
            miss_limiter=RateLimiter(config.rate_limit.per_s, config.rate_limit.burst),
        )
        try:
            attestor.refresh()
        except PodmanError as exc:
            print(
                f"flashpods-token: Podman not reachable yet ({exc}); will retry per request",
                file=sys.stderr,
            )
        attest = peer_attest_fn(attestor)

        def cleanup() -> None:
            attestor.close()
            audit.close()
    else:
        bundle = open_bundle(config, "flashpods-token")
        verifier = SpireVerifier(
            bundle,
            config.trust_domain,
            config.spire.audience,
            config.spire.leeway_s,
            podman,
            exclusive_of=frozenset({PROXY_AUDIENCE}),
        )
        attest = spire_attest_fn(verifier)

        def cleanup() -> None:
            close = getattr(bundle, "close", None)
            if close:
                close()
            audit.close()

    return TokenService(config.mode, policy, audit, limiter, attest), cleanup


def build_server(config: TokenConfig) -> tuple[TokenServer, Callable[[], None]]:
    service, cleanup = build_service(config)
    server = TokenServer(config.socket, service, config.limits, config.socket_group)
    return server, cleanup
