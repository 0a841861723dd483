"""Run inside the scoped job: receive-pack bodies git would never send, straight to the
proxy socket (TLS with the proxy's CA). Prints "<label>:<status>" per attempt."""

import base64
import contextlib
import os
import socket
import ssl

token = os.environ["GITHUB_TOKEN"]
auth = base64.b64encode(f"x-access-token:{token}".encode()).decode()
ctx = ssl.create_default_context(cafile=os.environ["FLASHPODS_PROXY_CA"])


def attempt(label, body, length=None):
    raw = socket.socket(socket.AF_UNIX)
    raw.connect("/run/flashpods/proxy.sock")
    s = ctx.wrap_socket(raw, server_hostname="github.com")
    head = (
        "POST /o/r.git/git-receive-pack HTTP/1.1\r\nHost: github.com\r\n"
        f"Authorization: Basic {auth}\r\n"
        "Content-Type: application/x-git-receive-pack-request\r\n"
        f"Content-Length: {len(body) if length is None else length}\r\n\r\n"
    )

    # One thread: an SSL socket must not be written and read at once. The proxy stops
    # reading the giant stream and closes; its answer is still waiting to be read.
    s.settimeout(60)
    with contextlib.suppress(OSError):
        s.sendall(head.encode() + body)
    try:
        answer = s.recv(4096)
    except OSError as exc:
        answer = f"HTTP/1.1 {type(exc).__name__}".encode()
    print(f"{label}:{answer.split(b' ')[1].decode() if answer else 'closed'}")
    print(answer.split(b"\r\n\r\n", 1)[-1][:300].decode(errors="replace"))
    s.close()


oid = "1" * 40
attempt("garbage", b"zzzz" * 100)
line = f"{oid} {oid} refs/heads/flashpods/x/{'a' * 60000}\n".encode()
attempt("giant", (b"%04x" % (len(line) + 4) + line) * 40)  # 2.4 MB, never a flush
attempt("trickle", b"00", length=1000)  # then nothing: the proxy's deadline
