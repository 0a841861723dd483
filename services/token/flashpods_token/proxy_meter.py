"""Metering Messages API calls in the credential proxy: the request's `max_tokens`
clamped to the job's budget, the response's usage read as it streams to the job
(usage.py). Responses are passed on byte for byte; only a copy is decoded."""

from __future__ import annotations

import json
import socket
import time

from .http_chunks import ChunkDecoder
from .usage import ResponseUsage

MAX_REQUEST_BODY = 32 * 1024 * 1024
CHUNK = 65536


class MeterError(Exception):
    """The request cannot be metered; (status, code, message) for the refusal."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code


def is_metered(method: str, target: str) -> bool:
    return method == "POST" and target.split("?", 1)[0] == "/v1/messages"


def read_body(
    sock: socket.socket, have: bytes, headers: list[tuple[str, str]], wait_s: float
) -> bytes:
    """The whole request body (Content-Length only: a chunked upload cannot be clamped)."""
    names = {n.lower(): v for n, v in headers}
    if "transfer-encoding" in names:
        raise MeterError(411, "length_required", "send a Messages API body with Content-Length")
    try:
        length = int(names.get("content-length", "0"))
    except ValueError:
        raise MeterError(400, "bad_request", "Content-Length is not a number") from None
    if not 0 <= length <= MAX_REQUEST_BODY:
        raise MeterError(413, "body_too_large", f"a Messages API body over {MAX_REQUEST_BODY}")
    body = bytearray(have)
    deadline = time.monotonic() + wait_s
    while len(body) < length:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise MeterError(408, "too_slow", "the request body did not arrive in time")
        sock.settimeout(remaining)
        chunk = sock.recv(min(CHUNK, length - len(body)))
        if not chunk:
            raise ConnectionResetError("the client closed inside its request body")
        body += chunk
    return bytes(body[:length])


def clamp(body: bytes, granted: int | None) -> tuple[bytes, int | None]:
    """(the body with max_tokens at most granted, the max_tokens the job asked for)."""
    try:
        data = json.loads(body)
    except ValueError:
        raise MeterError(400, "bad_request", "a Messages API body must be JSON") from None
    if not isinstance(data, dict):
        raise MeterError(400, "bad_request", "a Messages API body must be a JSON object")
    asked = data.get("max_tokens")
    if not isinstance(asked, int) or isinstance(asked, bool) or asked < 1:
        asked = None
    if granted is None or (asked is not None and asked <= granted):
        return body, asked
    data["max_tokens"] = granted
    return json.dumps(data, separators=(",", ":")).encode(), asked


def relay_response(
    upstream: socket.socket, client: socket.socket, head: bytes, rest: bytes, idle_s: float
) -> dict[str, int]:
    """Send the response (head already read) on to the client; return the usage seen."""
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    meter = ResponseUsage(headers.get("content-type", ""))
    chunked = "chunked" in headers.get("transfer-encoding", "").lower()
    decoder = ChunkDecoder() if chunked else None
    try:
        left = None if chunked else int(headers["content-length"])
    except (KeyError, ValueError):
        left = None
    client.sendall(head + b"\r\n\r\n")
    upstream.settimeout(idle_s)
    data = rest
    while True:
        if data:
            if left is not None:
                data = data[:left]
                left -= len(data)
            client.sendall(data)
            try:
                meter.feed(decoder.feed(data) if decoder else data)
            except ValueError:
                decoder = None  # bad framing: passed on as is, no longer read
        if (decoder and decoder.done) or left == 0:
            break
        try:
            data = upstream.recv(CHUNK)
        except (TimeoutError, OSError):
            break
        if not data:
            break
    return meter.finish()
