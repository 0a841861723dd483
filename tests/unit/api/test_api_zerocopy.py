"""artifacts.tar member bodies by sendfile on the connection socket (zerocopy.py): the
bytes on the wire are the same as the read-through-Python stream, whatever changed since
the plan; and the sendfile path is offered only where it is safe."""

from __future__ import annotations

import io
import os
import socket
import ssl
import tarfile
import threading
from pathlib import Path

import pytest
from flashpods_api import artifacts, zerocopy


def _artifacts(root: Path) -> None:
    (root / "sub").mkdir(parents=True, exist_ok=True)
    (root / "a.txt").write_bytes(b"a" * 513)
    (root / "sub" / "big.bin").write_bytes(os.urandom(3 * artifacts.TAR_CHUNK + 17))
    (root / "grows.bin").write_bytes(b"g" * 1000)
    (root / "empty").write_bytes(b"")


def _wire(members, environ_extra=None, timeout=None) -> bytes:
    """What a client receives when gunicorn writes each yielded item and the generator
    sends member bodies itself: a real socket pair, read on another thread."""
    server, client = socket.socketpair()
    server.settimeout(timeout)  # None: gunicorn's gthread socket; a timeout: another path
    received = bytearray()

    def read() -> None:
        while block := client.recv(1 << 20):
            received.extend(block)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        environ = {
            "gunicorn.socket": server,
            "REQUEST_METHOD": "GET",
            "wsgi.url_scheme": "http",
            **(environ_extra or {}),
        }
        sender = zerocopy.socket_sender(environ)
        assert sender is not None
        for item in artifacts.stream_tar(members, sender):
            server.sendall(item)  # what gunicorn's Response.write does
    finally:
        server.shutdown(socket.SHUT_WR)
        reader.join(30)
        server.close()
        client.close()
    return bytes(received)


@pytest.mark.parametrize("timeout", [None, 5.0])
def test_sendfile_stream_equals_the_read_stream(tmp_path, timeout):
    job_id = "job-zc"
    _artifacts(tmp_path / job_id)
    members, length = artifacts.tar_plan(tmp_path, job_id, None)
    through_python = b"".join(artifacts.stream_tar(members))
    by_sendfile = _wire(members, timeout=timeout)
    assert len(by_sendfile) == length == len(through_python)
    assert by_sendfile == through_python
    with tarfile.open(fileobj=io.BytesIO(by_sendfile)) as tar:
        assert (
            tar.extractfile("sub/big.bin").read()
            == (tmp_path / job_id / "sub" / "big.bin").read_bytes()
        )


@pytest.mark.parametrize("timeout", [None, 5.0])
def test_sendfile_stream_keeps_the_promised_length_when_files_change(tmp_path, timeout):
    job_id = "job-zc"
    root = tmp_path / job_id
    _artifacts(root)
    members, length = artifacts.tar_plan(tmp_path, job_id, None)
    (root / "a.txt").write_bytes(b"short")  # shrank: padded with zeros
    (root / "grows.bin").write_bytes(b"G" * 5000)  # grew: cut at the planned size
    (root / "sub" / "big.bin").unlink()
    os.symlink("/etc/passwd", root / "sub" / "big.bin")  # now a link: zeros, never followed
    data = _wire(members, timeout=timeout)
    assert len(data) == length
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert tar.extractfile("a.txt").read() == b"short" + b"\0" * 508
        assert tar.extractfile("grows.bin").read() == b"G" * 1000
        assert set(tar.extractfile("sub/big.bin").read()) == {0}


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"REQUEST_METHOD": "HEAD"}, "a HEAD answer has no body to send"),
        ({"wsgi.url_scheme": "https"}, "TLS must not be bypassed"),
        ({"gunicorn.socket": None}, "not under gunicorn (e.g. Flask's test client)"),
        ({"gunicorn.socket": io.BytesIO()}, "not a socket"),
    ],
)
def test_no_sendfile_where_it_would_be_unsafe(change, why):
    a, b = socket.socketpair()
    with a, b:
        environ = {"gunicorn.socket": a, "REQUEST_METHOD": "GET", "wsgi.url_scheme": "http"}
        assert zerocopy.socket_sender(environ) is not None
        environ.update(change)
        assert zerocopy.socket_sender(environ) is None, why


def test_no_sendfile_on_a_tls_or_non_blocking_socket():
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        environ = {"gunicorn.socket": a, "REQUEST_METHOD": "GET", "wsgi.url_scheme": "http"}
        assert zerocopy.socket_sender(environ) is None
        a.setblocking(True)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        wrapped = context.wrap_socket(a, do_handshake_on_connect=False)
        environ["gunicorn.socket"] = wrapped
        assert zerocopy.socket_sender(environ) is None
        wrapped.detach()
