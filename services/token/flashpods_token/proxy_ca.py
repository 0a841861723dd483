"""The proxy's certificate authority: one per host, private key only on the host.

Created at the proxy's first start in `ca_dir` (key 0600, certificate 0644) and reused
after; or made beforehand (`flashpods-proxy make-ca KEY CERT`, NixOS's one-shot unit)
and handed to the proxy as files it only reads (`ca_key_file`, `ca_cert_file`: on NixOS
the unit's systemd credentials). Leaves are minted in memory per host name and cached.
Jobs get the certificate (`GET /ca.pem` on the proxy socket), never the key.
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


def _make_key(key_path: Path) -> ec.EllipticCurvePrivateKey:
    key = ec.generate_private_key(ec.SECP256R1())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Created 0600 and never looser, then renamed into place.
    key_tmp = key_path.with_name(f".{key_path.name}.tmp")
    key_tmp.unlink(missing_ok=True)
    fd = os.open(key_tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key_pem)
    os.rename(key_tmp, key_path)
    return key


def _make_cert(key: ec.EllipticCurvePrivateKey, cert_path: Path) -> None:
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
    cert_tmp = cert_path.with_name(f".{cert_path.name}.tmp")
    cert_tmp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    os.chmod(cert_tmp, 0o644)
    os.rename(cert_tmp, cert_path)


def _create(directory: Path) -> None:
    # Key first, the certificate last, so a half-made CA (crash in between) is
    # recognised and made again.
    _make_cert(_make_key(directory / CA_KEY), directory / CA_CERT)


def _load_key(key_path: Path, remedy: str) -> ec.EllipticCurvePrivateKey:
    if os.stat(key_path).st_mode & 0o077:
        raise SystemExit(
            f"flashpods-proxy: {key_path} is readable by others; chmod 0600 it ({remedy})"
        )
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise SystemExit(
            f"flashpods-proxy: {key_path} is not an unencrypted PEM private key ({exc}); {remedy}"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise SystemExit(
            f"flashpods-proxy: {key_path} is not the EC key this proxy makes; {remedy}"
        )
    return key


def make_ca(key_file: str, cert_file: str) -> list[str]:
    """Make what is missing of a CA at these paths, never replacing a file: a new key
    (0600) when there is none, a certificate for the key when there is none. Returns
    what it made. The parent directories must exist (NixOS: tmpfiles, root-only)."""
    key_path, cert_path = Path(key_file), Path(cert_file)
    made = []
    if not key_path.exists():
        if cert_path.exists():
            raise SystemExit(
                f"flashpods-proxy: {cert_path} exists without its key {key_path}; put the "
                f"key there, or remove {cert_path} to make a new CA"
            )
        key = _make_key(key_path)
        made.append(str(key_path))
    else:
        key = _load_key(key_path, f"or remove it and {cert_path} to make a new CA")
    if not cert_path.exists():
        _make_cert(key, cert_path)
        made.append(str(cert_path))
    return made


class HostCA:
    def __init__(self, directory: str):
        """The CA in `directory`, made there at the first start."""
        self.directory = Path(directory)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not (self.directory / CA_CERT).exists() or not (self.directory / CA_KEY).exists():
            _create(self.directory)
        self._load(
            self.directory / CA_KEY, self.directory / CA_CERT, "remove both files to make a new CA"
        )

    @classmethod
    def from_files(cls, key_file: str, cert_file: str) -> HostCA:
        """A CA made elsewhere (`make_ca`), read and never written: on NixOS the files are
        the unit's systemd credentials ($CREDENTIALS_DIRECTORY, read-only)."""
        remedy = (
            "make it with `flashpods-proxy make-ca KEY CERT` (NixOS: "
            "services.flashpods.proxy.ca, docs/nixos.md)"
        )
        for path in (key_file, cert_file):
            if not os.path.isfile(path):
                raise SystemExit(f"flashpods-proxy: the proxy CA's {path} is missing; {remedy}")
        ca = cls.__new__(cls)
        ca.directory = Path(key_file).parent
        ca._load(Path(key_file), Path(cert_file), remedy)
        return ca

    def _load(self, key_path: Path, cert_path: Path, remedy: str) -> None:
        self.cert_pem = cert_path.read_bytes()
        try:
            self._cert = x509.load_pem_x509_certificate(self.cert_pem)
        except ValueError as exc:
            raise SystemExit(
                f"flashpods-proxy: {cert_path} is not a PEM certificate ({exc}); {remedy}"
            ) from None
        self._key = _load_key(key_path, remedy)
        # A certificate of another key would make leaves no job can verify.
        if self._cert.public_key() != self._key.public_key():
            raise SystemExit(
                f"flashpods-proxy: {cert_path} is not the certificate of {key_path}; {remedy}"
            )
        try:
            is_ca = self._cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if not is_ca:
            raise SystemExit(f"flashpods-proxy: {cert_path} is not a CA certificate; {remedy}")
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
