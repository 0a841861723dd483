"""Stand-in servers for the host-simulation topology (run as a script inside a netns).

    standin.py tcp NAME PORT [PORT...] [--bind ADDR ...]
        On each port (every address, IPv4 and IPv6 unless --bind names addresses),
        answer every connection with one line "NAME <local address> <port>" and close.
        A client that receives that line has reached this server, nothing else.
    standin.py tls NAME PORT --cert CHAIN --key KEY
        On PORT (every address), complete a TLS handshake with CHAIN and answer one HTTP
        request with 200 and the body "NAME <local address> <port>".
    standin.py dns ADDR [ADDR...]
        Answer every DNS query on UDP port 53 of each address with one A record
        (203.0.113.10), so a job can check that its resolver answers.

Prints "ready" on stdout once every socket is bound.
"""

from __future__ import annotations

import argparse
import contextlib
import selectors
import socket
import ssl
import struct
import sys
import threading

ANSWER = bytes([203, 0, 113, 10])


def _tcp_sockets(ports: list[int], binds: list[str]) -> list[socket.socket]:
    sockets = []
    for port in ports:
        targets = [(a, socket.AF_INET6 if ":" in a else socket.AF_INET) for a in binds]
        for addr, family in targets or [("::", socket.AF_INET6)]:
            s = socket.socket(family, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and addr == "::":
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            s.bind((addr, port))
            s.listen(64)
            sockets.append(s)
    return sockets


def serve_tcp(name: str, ports: list[int], binds: list[str]) -> None:
    sel = selectors.DefaultSelector()
    for s in _tcp_sockets(ports, binds):
        sel.register(s, selectors.EVENT_READ)
    print("ready", flush=True)
    while True:
        for key, _ in sel.select():
            conn, _peer = key.fileobj.accept()
            with conn:
                local = conn.getsockname()
                host = local[0].removeprefix("::ffff:")
                with contextlib.suppress(OSError):
                    conn.sendall(f"{name} {host} {local[1]}\n".encode())


def _tls_answer(conn: socket.socket, ctx: ssl.SSLContext, name: str) -> None:
    with contextlib.suppress(OSError), conn:
        conn.settimeout(10)
        with ctx.wrap_socket(conn, server_side=True) as tls:
            data = b""
            while b"\r\n\r\n" not in data and len(data) < 65536:
                chunk = tls.recv(4096)
                if not chunk:
                    return
                data += chunk
            local = tls.getsockname()
            body = f"{name} {local[0].removeprefix('::ffff:')} {local[1]}\n".encode()
            head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            tls.sendall(head.encode() + body)


def serve_tls(name: str, port: int, cert: str, key: str) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    (listener,) = _tcp_sockets([port], [])
    print("ready", flush=True)
    while True:
        conn, _peer = listener.accept()
        # One thread per connection: a handshake that stalls never blocks the next one.
        threading.Thread(target=_tls_answer, args=(conn, ctx, name), daemon=True).start()


def _answer(query: bytes) -> bytes | None:
    if len(query) < 12:
        return None
    ident = query[:2]
    end = 12
    while end < len(query) and query[end] != 0:
        end += query[end] + 1
    question = query[12 : end + 5]
    header = ident + struct.pack(">HHHHH", 0x8180, 1, 1, 0, 0)
    record = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + ANSWER
    return header + question + record


def serve_dns(addresses: list[str]) -> None:
    sel = selectors.DefaultSelector()
    for addr in addresses:
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        s = socket.socket(family, socket.SOCK_DGRAM)
        s.bind((addr, 53))
        sel.register(s, selectors.EVENT_READ)
    print("ready", flush=True)
    while True:
        for key, _ in sel.select():
            data, peer = key.fileobj.recvfrom(4096)
            reply = _answer(data)
            if reply:
                key.fileobj.sendto(reply, peer)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="kind", required=True)
    tcp = sub.add_parser("tcp")
    tcp.add_argument("name")
    tcp.add_argument("ports", nargs="+", type=int)
    tcp.add_argument("--bind", action="append", default=[])
    tls = sub.add_parser("tls")
    tls.add_argument("name")
    tls.add_argument("port", type=int)
    tls.add_argument("--cert", required=True)
    tls.add_argument("--key", required=True)
    dns = sub.add_parser("dns")
    dns.add_argument("addresses", nargs="+")
    args = parser.parse_args(argv)
    if args.kind == "tcp":
        serve_tcp(args.name, args.ports, args.bind)
    elif args.kind == "tls":
        serve_tls(args.name, args.port, args.cert, args.key)
    else:
        serve_dns(args.addresses)


if __name__ == "__main__":
    main(sys.argv[1:])
