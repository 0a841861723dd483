"""Try TCP connections and print what happened as JSON (run inside a netns, any user).

    probe.py '[["10.0.0.1", 8080], ["2001:db8:203::10", 80], ["10.255.255.53", "dns"]]'

For each target: {"reached": bool, "banner": first line received or "", "error": text,
"seconds": how long it took}. A stand-in server sends a banner at once; the API and
rsyncd answer the HTTP request line this sends. Refusals must come fast (the firewall
rejects, it does not drop), so the timeout is short.
"""

from __future__ import annotations

import json
import socket
import sys
import time

TIMEOUT_S = 3.0
REQUEST = b"GET /healthz HTTP/1.0\r\n\r\n"


def probe(addr: str, port: int) -> dict:
    start = time.monotonic()
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    result = {"reached": False, "banner": "", "error": ""}
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(TIMEOUT_S)
            # getaddrinfo turns "fe80::1%eth0" into the 4-tuple with its scope id.
            s.connect(socket.getaddrinfo(addr, port, family, socket.SOCK_STREAM)[0][4])
            result["reached"] = True
            try:
                s.sendall(REQUEST)
                data = s.recv(200)
                result["banner"] = data.decode(errors="replace").split("\n")[0].strip()
            except OSError as error:
                result["error"] = f"after connect: {error}"
    except OSError as error:
        result["error"] = str(error) or type(error).__name__
    result["seconds"] = round(time.monotonic() - start, 3)
    return result


def lookup(server: str) -> dict:
    """One DNS query (A flashpods.test) over UDP; the answer's last 4 bytes as an address."""
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    query += b"\x09flashpods\x04test\x00\x00\x01\x00\x01"
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.settimeout(TIMEOUT_S)
            s.connect((server, 53))
            s.send(query)
            answer = s.recv(512)
        return {"answered": True, "address": socket.inet_ntoa(answer[-4:]), "error": ""}
    except OSError as error:
        return {"answered": False, "address": "", "error": str(error) or type(error).__name__}


def main() -> None:
    targets = json.loads(sys.argv[1])
    results = {}
    for addr, port in targets:
        key = f"{addr} {port}"
        results[key] = lookup(addr) if port == "dns" else probe(addr, port)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
