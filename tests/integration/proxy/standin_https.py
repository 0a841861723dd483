"""A stand-in HTTPS origin ("GitHub", "the Messages API", "another host") in the test
internet: a test CA, a leaf for every stand-in name, and a server that records what
arrived (method, path, headers) and answers 200 JSON."""

from __future__ import annotations

import datetime
import http.server
import ipaddress
import json
import ssl
import tempfile
import threading
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from netlab import NetnsThread


def _cert(subject: str, issuer_key, issuer_name, public_key, ca: bool, names=()):
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer_name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if names:
        sans = []
        for n in names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                sans.append(x509.DNSName(n))
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


class StandinOrigin:
    """HTTPS on (address, 443) inside the netns at `netns_path`, for `names`."""

    def __init__(self, address: str, netns_path: str, names: list[str], workdir: Path):
        self.address = address
        self.requests: list[dict] = []
        self.git = None  # a standin_git.GitBackend serves git's smart HTTP when set
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stand-in origin CA")])
        ca = _cert("stand-in origin CA", ca_key, ca_name, ca_key.public_key(), True)
        leaf_key = ec.generate_private_key(ec.SECP256R1())
        leaf = _cert(names[0], ca_key, ca_name, leaf_key.public_key(), False, names)
        # The proxy (the token user) reads the CA file: world-readable, as a CA is.
        self.ca_file = workdir / "origin-ca.pem"
        self.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        self.ca_file.chmod(0o644)
        # Also for other stand-ins on this address (the scripted model).
        self.tls_context = self._ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with tempfile.TemporaryDirectory() as tmp:
            chain, key = Path(tmp, "chain.pem"), Path(tmp, "key.pem")
            chain.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
            key.write_bytes(
                leaf_key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
            self._ctx.load_cert_chain(chain, key)
        self._netns = NetnsThread(netns_path)
        self._server = self._netns.call(self._make_server)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _make_server(self) -> http.server.ThreadingHTTPServer:
        origin = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                if origin.git is not None and origin.git.wants(self.path):
                    record = {
                        "method": self.command,
                        "path": self.path,
                        "host": self.headers["Host"],
                    }
                    record["headers"] = {k.lower(): v for k, v in self.headers.items()}
                    origin.requests.append(record)
                    origin.git.serve(self, record)
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                origin.requests.append(
                    {
                        "method": self.command,
                        "path": self.path,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "body": body,
                    }
                )
                if "/info/refs" in self.path and "authorization" not in {
                    k.lower() for k in self.headers
                }:
                    # As GitHub does: git sends its credentials only after a challenge.
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="GitHub"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if self.path == "/v1/messages":
                    self._messages(json.loads(body))
                    return
                out = json.dumps({"ok": True, "path": self.path}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def _messages(self, request: dict) -> None:
                """A model that reports usage: 10 input tokens, 30 output (fewer if
                max_tokens says so); streamed (chunked SSE) when asked to."""
                output = min(30, int(request.get("max_tokens", 30)))
                if not request.get("stream"):
                    out = json.dumps(
                        {
                            "type": "message",
                            "content": [{"type": "text", "text": "hi"}],
                            "usage": {"input_tokens": 10, "output_tokens": output},
                        }
                    ).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(out)))
                    self.end_headers()
                    self.wfile.write(out)
                    return
                events = [
                    ("message_start", {"type": "message_start", "message": {
                        "usage": {"input_tokens": 10, "output_tokens": 1}}}),
                    ("content_block_delta", {"type": "content_block_delta", "delta": {
                        "type": "text_delta", "text": "hi"}}),
                    ("message_delta", {"type": "message_delta", "usage": {
                        "output_tokens": output}}),
                    ("message_stop", {"type": "message_stop"}),
                ]  # fmt: skip
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for name, data in events:
                    # One event split over two chunks: the proxy must reassemble lines.
                    text = f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()
                    for part in (text[:7], text[7:]):
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")

            do_GET = do_POST = _any  # noqa: N815 - http.server's names

            def log_message(self, *args: object) -> None:
                pass

        server = http.server.ThreadingHTTPServer((self.address, 443), Handler)
        server.daemon_threads = True
        server.socket = self._ctx.wrap_socket(server.socket, server_side=True)
        return server

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._netns.close()

    def seen(self, path_prefix: str) -> list[dict]:
        return [r for r in self.requests if r["path"].startswith(path_prefix)]
