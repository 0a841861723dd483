"""The proxy's CA made beforehand and handed over as files it only reads: what NixOS
does (a one-shot `flashpods-proxy make-ca` into a root-only directory, the unit's
systemd credentials in $CREDENTIALS_DIRECTORY). Real keys, real certificates, a real
TLS handshake against a leaf the loaded CA signs."""

from __future__ import annotations

import os
import socket
import ssl
import threading
from pathlib import Path

import pytest
from conftest import base_config
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from flashpods_token.config import ConfigError, parse_config
from flashpods_token.proxy_ca import HostCA, make_ca
from flashpods_token.proxy_cli import main as proxy_main


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def _credentials(tmp_path: Path, key: Path, cert: Path) -> Path:
    """Copies as systemd hands them to a unit: files 0400, directory 0500."""
    creds = tmp_path / "credentials"
    creds.mkdir()
    for name, source in (("ca-key.pem", key), ("ca.pem", cert)):
        (creds / name).write_bytes(source.read_bytes())
        os.chmod(creds / name, 0o400)
    os.chmod(creds, 0o500)
    return creds


def test_make_ca_creates_a_root_only_key_and_a_public_certificate(tmp_path):
    key, cert = tmp_path / "ca-key.pem", tmp_path / "ca.pem"
    assert make_ca(str(key), str(cert)) == [str(key), str(cert)]
    assert _mode(key) == 0o600
    assert _mode(cert) == 0o644
    parsed = x509.load_pem_x509_certificate(cert.read_bytes())
    assert parsed.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    # A second run (every boot) changes nothing: the CA jobs trust stays.
    before = (key.read_bytes(), cert.read_bytes())
    assert make_ca(str(key), str(cert)) == []
    assert (key.read_bytes(), cert.read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca-key.pem", "ca.pem"]


def test_make_ca_mints_a_certificate_for_a_key_the_operator_supplied(tmp_path):
    key, cert = tmp_path / "ca-key.pem", tmp_path / "ca.pem"
    own = ec.generate_private_key(ec.SECP256R1())
    fd = os.open(key, os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(
            own.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    assert make_ca(str(key), str(cert)) == [str(cert)]
    assert x509.load_pem_x509_certificate(cert.read_bytes()).public_key() == own.public_key()


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("cert-only", "exists without its key"),
        ("loose-key", "readable by others"),
        ("rsa-key", "not the EC key"),
    ],
)
def test_make_ca_never_replaces_what_it_cannot_use(tmp_path, setup, message):
    key, cert = tmp_path / "ca-key.pem", tmp_path / "ca.pem"
    if setup == "cert-only":
        cert.write_text("someone's certificate")
    elif setup == "loose-key":
        make_ca(str(key), str(cert))
        os.chmod(key, 0o644)
    else:
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        fd = os.open(key, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(
                other.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(SystemExit, match=message):
        make_ca(str(key), str(cert))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_the_make_ca_command_line_wants_two_absolute_paths(tmp_path, capsys):
    assert proxy_main(["make-ca", "ca-key.pem", "ca.pem"]) == 2
    assert proxy_main(["make-ca", str(tmp_path / "k.pem"), str(tmp_path / "c.pem")]) == 0
    assert "made" in capsys.readouterr().err
    assert _mode(tmp_path / "k.pem") == 0o600


def test_a_ca_from_credentials_is_read_only_and_signs_leaves_a_client_verifies(tmp_path):
    made = tmp_path / "made"
    made.mkdir()
    make_ca(str(made / "ca-key.pem"), str(made / "ca.pem"))
    creds = _credentials(tmp_path, made / "ca-key.pem", made / "ca.pem")
    try:
        ca = HostCA.from_files(str(creds / "ca-key.pem"), str(creds / "ca.pem"))
        assert ca.cert_pem == (made / "ca.pem").read_bytes()  # what GET /ca.pem serves
        assert sorted(p.name for p in creds.iterdir()) == ["ca-key.pem", "ca.pem"]

        # A real handshake: the leaf for api.github.com verifies against the CA file.
        server_ctx = ca.server_context("api.github.com")
        client_ctx = ssl.create_default_context(cafile=str(made / "ca.pem"))
        left, right = socket.socketpair()
        errors: list[BaseException] = []

        def serve() -> None:
            try:
                with server_ctx.wrap_socket(left, server_side=True) as tls:
                    tls.sendall(b"ok")
            except BaseException as exc:  # surfaced by the assertion below
                errors.append(exc)

        thread = threading.Thread(target=serve)
        thread.start()
        with client_ctx.wrap_socket(right, server_hostname="api.github.com") as tls:
            assert tls.recv(2) == b"ok"
        thread.join(10)
        assert errors == []
    finally:
        os.chmod(creds, 0o700)


def test_a_ca_from_files_refuses_a_missing_or_mismatched_or_loose_key(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    for d in (one, two):
        d.mkdir()
        make_ca(str(d / "ca-key.pem"), str(d / "ca.pem"))
    with pytest.raises(SystemExit, match="missing.*services.flashpods.proxy.ca"):
        HostCA.from_files(str(tmp_path / "absent.pem"), str(one / "ca.pem"))
    with pytest.raises(SystemExit, match="not the certificate of"):
        HostCA.from_files(str(one / "ca-key.pem"), str(two / "ca.pem"))
    os.chmod(one / "ca-key.pem", 0o640)
    with pytest.raises(SystemExit, match="readable by others"):
        HostCA.from_files(str(one / "ca-key.pem"), str(one / "ca.pem"))


def _proxy(**extra) -> dict:
    return {"socket": "/run/x/proxy.sock", "firewall_template": "/t"} | extra


@pytest.mark.parametrize(
    ("proxy", "message"),
    [
        (_proxy(), "missing key 'ca_dir'"),
        (_proxy(ca_key_file="/c/ca-key.pem"), "give both ca_key_file and ca_cert_file"),
        (
            _proxy(ca_dir="/v", ca_key_file="/c/k.pem", ca_cert_file="/c/c.pem"),
            "not both",
        ),
        (_proxy(ca_key_file="ca-key.pem", ca_cert_file="/c/c.pem"), "must be an absolute path"),
    ],
)
def test_the_ca_settings_say_what_to_change(tmp_path, secret_files, podman, proxy, message):
    cfg = base_config(tmp_path, secret_files, podman, spire={"bundle_file": "/b"})
    cfg["proxy"] = proxy
    with pytest.raises(ConfigError, match=message):
        parse_config(cfg)


def test_ca_files_instead_of_a_ca_dir_load(tmp_path, secret_files, podman):
    cfg = base_config(tmp_path, secret_files, podman, spire={"bundle_file": "/b"})
    cfg["proxy"] = _proxy(
        ca_key_file="/run/credentials/flashpods-proxy.service/ca-key.pem",
        ca_cert_file="/run/credentials/flashpods-proxy.service/ca.pem",
    )
    parsed = parse_config(cfg).proxy
    assert parsed.ca_dir is None
    assert parsed.ca_key_file == "/run/credentials/flashpods-proxy.service/ca-key.pem"
