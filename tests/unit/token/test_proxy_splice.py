"""proxy.splice against a real TLS 1.3 upstream: the server's session tickets arrive
right after the handshake and wake select() without any application data. A blocking
read there waited for an answer that the server sends only after the whole upload (a
git push over 1 MiB hung through the proxy until this was fixed)."""

from __future__ import annotations

import datetime
import os
import socket
import ssl
import tempfile
import threading
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from flashpods_token.proxy import splice

UPLOAD = 3_000_000


def _server_context(tmp: Path) -> tuple[ssl.SSLContext, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "upstream.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("upstream.test")]), False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp / "cert.pem", tmp / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3  # tickets after the handshake
    ctx.load_cert_chain(cert_file, key_file)
    return ctx, cert_file


def test_an_upload_passes_while_the_upstream_only_sent_session_tickets():
    with tempfile.TemporaryDirectory() as tmp:
        server_ctx, cert_file = _server_context(Path(tmp))
        listener = socket.create_server(("127.0.0.1", 0))
        got = bytearray()

        def upstream_server() -> None:
            conn, _ = listener.accept()
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                while len(got) < UPLOAD:  # answers only after the whole upload
                    chunk = tls.recv(65536)
                    if not chunk:
                        return
                    got.extend(chunk)
                tls.sendall(b"done")

        threading.Thread(target=upstream_server, daemon=True).start()
        client_ctx = ssl.create_default_context(cafile=str(cert_file))
        upstream = client_ctx.wrap_socket(
            socket.create_connection(listener.getsockname()), server_hostname="upstream.test"
        )
        ours, job = socket.socketpair()
        sender = threading.Thread(target=job.sendall, args=(b"x" * UPLOAD,), daemon=True)
        sender.start()
        done = threading.Thread(target=splice, args=(ours, upstream, 20), daemon=True)
        done.start()
        job.settimeout(15)
        assert job.recv(16) == b"done"
        assert len(got) == UPLOAD
        done.join(15)
        assert not done.is_alive()
        for s in (ours, job, upstream, listener):
            s.close()


def _trickle(listener: socket.socket, upstream_addr: tuple[str, int]) -> None:
    """A TCP hop that cuts each server chunk short by a few bytes and sends the rest a
    moment later: the reader then finds whole TLS records followed by part of one."""
    conn, _ = listener.accept()
    far = socket.create_connection(upstream_addr)

    def up() -> None:
        while data := conn.recv(65536):
            far.sendall(data)
        far.shutdown(socket.SHUT_WR)

    pump = threading.Thread(target=up, daemon=True)
    pump.start()
    with conn, far:
        while data := far.recv(65536):
            if len(data) > 64:
                conn.sendall(data[:-20])
                time.sleep(0.05)
                conn.sendall(data[-20:])
            else:
                conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)
        pump.join(15)


def test_records_followed_by_part_of_one_arrive_whole():
    payload = os.urandom(400_000)
    with tempfile.TemporaryDirectory() as tmp:
        server_ctx, cert_file = _server_context(Path(tmp))
        origin = socket.create_server(("127.0.0.1", 0))
        hop = socket.create_server(("127.0.0.1", 0))

        def upstream_server() -> None:
            conn, _ = origin.accept()
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(16)  # the request
                for start in range(0, len(payload), 40_000):
                    tls.sendall(payload[start : start + 40_000])
                    time.sleep(0.01)

        threading.Thread(target=upstream_server, daemon=True).start()
        threading.Thread(target=_trickle, args=(hop, origin.getsockname()), daemon=True).start()
        client_ctx = ssl.create_default_context(cafile=str(cert_file))
        upstream = client_ctx.wrap_socket(
            socket.create_connection(hop.getsockname()), server_hostname="upstream.test"
        )
        ours, job = socket.socketpair()
        done = threading.Thread(target=splice, args=(ours, upstream, 20), daemon=True)
        done.start()
        job.sendall(b"GET")
        job.settimeout(15)
        got = bytearray()
        while len(got) < len(payload):
            chunk = job.recv(65536)
            if not chunk:
                break
            got.extend(chunk)
        assert len(got) == len(payload) and bytes(got) == payload  # nothing dropped
        job.close()  # the origin has closed too: the splice ends on its own
        done.join(15)
        assert not done.is_alive()
        for s in (ours, upstream, origin, hop):
            s.close()
