"""`flashpods-proxy`: the credential proxy, from the `proxy` block of FLASHPODS_TOKEN_CONFIG."""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

from .app import open_bundle
from .attest_peer import PeerAttestor, check_capability
from .audit import AuditLog
from .config import ConfigError, TokenConfig, load_config
from .egress import Egress, nonpublic_networks
from .podman import PodmanClient, PodmanError
from .policy import Policy
from .proxy import CredentialProxy, ProxyServer
from .proxy_attest import PROXY_AUDIENCE, SvidAttestor
from .proxy_ca import HostCA, make_ca
from .ratelimit import RateLimiter
from .usage import UsageBook
from .verify_spire import SpireVerifier


def spire_attestor(config: TokenConfig) -> SvidAttestor:
    """Spire mode: the job's JWT-SVID (audience flashpods-proxy) on each connection."""
    bundle = open_bundle(config, "flashpods-proxy")
    verifier = SpireVerifier(
        bundle,
        config.trust_domain,
        PROXY_AUDIENCE,
        config.spire.leeway_s,
        PodmanClient(config.podman_url, config.instance),
        exclusive_of=frozenset({config.spire.audience}),
    )
    return SvidAttestor(verifier, bundle)


def peer_attestor(config: TokenConfig) -> PeerAttestor:
    check_capability(config.podman_url[len("unix://") :])
    attestor = PeerAttestor(
        PodmanClient(config.podman_url, config.instance),
        config.trust_domain,
        config.instance,
        miss_limiter=RateLimiter(config.rate_limit.per_s, config.rate_limit.burst),
    )
    try:
        attestor.refresh()
    except PodmanError as exc:
        print(f"flashpods-proxy: Podman not reachable yet ({exc})", file=sys.stderr)
    return attestor


def build_proxy(config: TokenConfig) -> tuple[ProxyServer, PeerAttestor | SvidAttestor, AuditLog]:
    settings = config.proxy
    if settings is None:
        raise SystemExit("flashpods-proxy: the token config has no proxy block")
    try:
        forbidden = nonpublic_networks(Path(settings.firewall_template).read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(
            f"flashpods-proxy: cannot read the jobs' forbidden ranges from "
            f"{settings.firewall_template}: {exc}"
        ) from None
    attestor: PeerAttestor | SvidAttestor
    if config.mode == "spire":
        attestor = spire_attestor(config)
        attest, attest_head = attestor.connection, attestor.head
    else:
        attestor = peer_attestor(config)
        attest, attest_head = attestor.attest, None
    audit = AuditLog(
        None,  # stderr: the service log (journald on NixOS)
        failures_per_window=config.limits.audit_failures_per_window,
        window_s=config.limits.audit_window_s,
    )
    audit.start_flusher()
    proxy = CredentialProxy(
        settings,
        Policy(config.roles, config.secrets, settings.rules),
        attest,
        Egress(
            forbidden,
            settings.static_hosts,
            settings.connect_timeout_s,
            settings.refused_interfaces,
        ),
        (
            HostCA.from_files(settings.ca_key_file, settings.ca_cert_file)
            if settings.ca_key_file and settings.ca_cert_file
            else HostCA(str(settings.ca_dir))
        ),
        audit=audit,
        usage=(
            UsageBook(
                settings.usage_dir,
                settings.budget_tokens,
                config.socket_group,
                budget_dir=settings.budget_dir,
            )
            if settings.usage_dir
            else None
        ),
        attest_head=attest_head,
    )
    return ProxyServer(proxy, config.socket_group), attestor, audit


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(
            "usage: flashpods-proxy [CONFIG.json]  (default: $FLASHPODS_TOKEN_CONFIG)\n"
            "       flashpods-proxy make-ca KEY CERT  (make what is missing of a CA)"
        )
        return 0
    if argv and argv[0] == "make-ca":
        if len(argv) != 3 or not all(os.path.isabs(a) for a in argv[1:]):
            print("usage: flashpods-proxy make-ca /abs/ca-key.pem /abs/ca.pem", file=sys.stderr)
            return 2
        made = make_ca(argv[1], argv[2])
        print(f"flashpods-proxy: made {', '.join(made) or 'nothing (both exist)'}", file=sys.stderr)
        return 0
    try:
        config = load_config(argv[0] if argv else None)
    except ConfigError as exc:
        print(f"flashpods-proxy: {exc}", file=sys.stderr)
        return 2
    stopping = threading.Event()
    server = None

    def stop(signum: int, frame: object) -> None:
        stopping.set()
        if server is not None:
            threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server, attestor, audit = build_proxy(config)
    try:
        if stopping.is_set():
            return 0
        print(
            f"flashpods-proxy: {config.mode} mode, listening on {server.server_address}, rules for "
            f"{', '.join(sorted(server.proxy.settings.rules)) or 'no secret'}",
            file=sys.stderr,
            flush=True,
        )
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        attestor.close()
        audit.close()  # what was held back is written with its counts
    return 0


if __name__ == "__main__":
    sys.exit(main())
