"""The proxy's certificate authority: one per host, private key only on the host.

Created at the proxy's first start in `ca_dir` (key 0600, certificate 0644) and reused
after; leaves are minted in memory per host name and cached. Jobs get the certificate
(`GET /ca.pem` on the proxy socket), never the key.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
import tempfile
import threading
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_KEY = "ca-key.pem"
CA_CERT = "ca.pem"
LEAF_DAYS = 7
CA_DAYS = 3650


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _name(common: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Flashpods"),
            x509.NameAttribute(NameOID.COMMON_NAME, common),
        ]
    )


def _create(directory: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    # The host name in the subject says which host's CA a job is looking at.
    subject = _name(f"Flashpods proxy CA ({socket.gethostname()[:40]})")
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Key first, created 0600 and never looser; the certificate last, so a half-made CA
    # (crash in between) is recognised and made again.
    key_tmp = directory / f".{CA_KEY}.tmp"
    key_tmp.unlink(missing_ok=True)
    fd = os.open(key_tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key_pem)
    os.rename(key_tmp, directory / CA_KEY)
    cert_tmp = directory / f".{CA_CERT}.tmp"
    cert_tmp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    os.chmod(cert_tmp, 0o644)
    os.rename(cert_tmp, directory / CA_CERT)


class HostCA:
    def __init__(self, directory: str):
        self.directory = Path(directory)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not (self.directory / CA_CERT).exists() or not (self.directory / CA_KEY).exists():
            _create(self.directory)
        if os.stat(self.directory / CA_KEY).st_mode & 0o077:
            raise SystemExit(
                f"flashpods-proxy: {self.directory / CA_KEY} is readable by others; "
                "chmod 0600 it (or remove both files to make a new CA)"
            )
        self.cert_pem = (self.directory / CA_CERT).read_bytes()
        self._cert = x509.load_pem_x509_certificate(self.cert_pem)
        key = serialization.load_pem_private_key(
            (self.directory / CA_KEY).read_bytes(), password=None
        )
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise SystemExit(
                f"flashpods-proxy: {self.directory / CA_KEY} is not the EC key this proxy "
                "makes; remove both files to make a new CA"
            )
        self._key = key
        # One leaf key for every name: leaves live in this process only.
        self._leaf_key = ec.generate_private_key(ec.SECP256R1())
        self._leaf_key_pem = self._leaf_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._lock = threading.Lock()

    def _leaf_pem(self, host: str) -> bytes:
        try:
            san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            san = x509.DNSName(host)
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(host))
            .issuer_name(self._cert.subject)
            .public_key(self._leaf_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=LEAF_DAYS))
            .add_extension(x509.SubjectAlternativeName([san]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .sign(self._key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM) + self.cert_pem

    def server_context(self, host: str) -> ssl.SSLContext:
        """A TLS server context presenting a leaf for host (cached per name)."""
        with self._lock:
            ctx = self._contexts.get(host)
        if ctx is not None:
            return ctx
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_alpn_protocols(["http/1.1"])
        # ssl loads a chain only from files: a private directory that is gone at once.
        with tempfile.TemporaryDirectory(prefix="flashpods-leaf-") as tmp:
            chain, key = Path(tmp) / "chain.pem", Path(tmp) / "key.pem"
            chain.write_bytes(self._leaf_pem(host))
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(self._leaf_key_pem)
            ctx.load_cert_chain(chain, key)
        with self._lock:
            if len(self._contexts) > 4096:
                self._contexts.clear()  # bound memory against a job naming many hosts
            self._contexts[host] = ctx
        return ctx
