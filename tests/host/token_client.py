"""One token exchange on the token service's unix socket (run as the caller to attest).

    token_client.py SOCKET '{"tokens": ["NAME"]}' [JWT-SVID]

Prints {"status": N, "body": text}. Used to ask for a token the helper would never
ask for, from inside a job's namespaces, and from processes outside any container.
"""

from __future__ import annotations

import json
import socket
import sys


def main() -> None:
    path, body = sys.argv[1], sys.argv[2].encode()
    # Spire mode: the caller's SVID, sent as flashpods-init sends it.
    bearer = f"Authorization: Bearer {sys.argv[3]}\r\n".encode() if len(sys.argv) > 3 else b""
    request = (
        b"POST /v1/exchange HTTP/1.1\r\nHost: token\r\nContent-Type: application/json\r\n"
        + bearer
        + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    print(json.dumps({"status": status, "body": payload.decode(errors="replace")}))


if __name__ == "__main__":
    main()
