"""JWT trust bundle streamed from the SPIRE agent's Workload API (FetchJWTBundles).

The agent answers `/SpiffeWorkloadAPI/FetchJWTBundles` with a stream of
`JWTBundlesResponse { map<string, bytes> bundles = 1; }`: JWKS documents keyed by the
trust domain's SPIFFE ID (`spiffe://<td>`), a new message whenever a bundle rotates.
Calls must carry the metadata `workload.spiffe.io: true`. The verifier is not itself
a registered workload, so the agent needs `allow_unauthenticated_verifiers = true`.

The two messages are simple enough to encode by hand, so only grpcio is needed (no
generated stubs, no protobuf runtime). The keys in these JWKS carry no `use`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import grpc

from .verify_spire import BundleKey, parse_jwks

METHOD = "/SpiffeWorkloadAPI/FetchJWTBundles"
SECURITY_HEADER = (("workload.spiffe.io", "true"),)


def _varint(data: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        if i >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7


def _fields(data: bytes) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of a protobuf message; skips what it need not read."""
    i = 0
    while i < len(data):
        tag, i = _varint(data, i)
        number, wire = tag >> 3, tag & 7
        value: int | bytes
        if wire == 0:
            value, i = _varint(data, i)
        elif wire == 2:
            size, i = _varint(data, i)
            if i + size > len(data):
                raise ValueError("truncated field")
            value, i = data[i : i + size], i + size
        elif wire == 1:
            value, i = data[i : i + 8], i + 8
        elif wire == 5:
            value, i = data[i : i + 4], i + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        yield number, wire, value


def decode_bundles(data: bytes) -> dict[str, bytes]:
    """JWTBundlesResponse -> {trust domain SPIFFE ID: JWKS bytes}."""
    bundles: dict[str, bytes] = {}
    for number, wire, entry in _fields(data):
        if number != 1 or wire != 2:
            continue
        key, value = "", b""
        for n, w, v in _fields(entry):
            if n == 1 and w == 2:
                key = v.decode("utf-8")
            elif n == 2 and w == 2:
                value = v
        bundles[key] = value
    return bundles


def _len_field(number: int, payload: bytes) -> bytes:
    out = bytearray([(number << 3) | 2])
    size = len(payload)
    while True:
        byte = size & 0x7F
        size >>= 7
        out.append(byte | (0x80 if size else 0))
        if not size:
            break
    return bytes(out) + payload


def encode_bundles(bundles: dict[str, bytes]) -> bytes:
    """The inverse of decode_bundles (for stand-in agents in tests)."""
    return b"".join(
        _len_field(1, _len_field(1, k.encode()) + _len_field(2, v)) for k, v in bundles.items()
    )


class WorkloadApiBundle:
    """JWT keys of one trust domain, kept current from the agent's stream."""

    def __init__(self, agent_socket: str, trust_domain: str, wait_s: float = 30.0):
        path = agent_socket.removeprefix("unix://").removeprefix("unix:")
        self._target = "unix:" + path
        self._td_id = f"spiffe://{trust_domain}"
        self._keys: dict[str, BundleKey] = {}
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._channel: grpc.Channel | None = None
        self.last_error = ""
        self._thread = threading.Thread(target=self._run, name="jwt-bundles", daemon=True)
        self._thread.start()
        if not self._ready.wait(wait_s):
            self.close()
            raise ValueError(
                f"no JWT bundle for {self._td_id} from the SPIRE agent at {path} within "
                f"{wait_s:.0f} s ({self.last_error or 'no answer'}); is the agent running "
                "with allow_unauthenticated_verifiers = true?"
            )

    def keys(self) -> dict[str, BundleKey]:
        return self._keys

    def _run(self) -> None:
        delay = 0.2
        while not self._stop.is_set():
            channel = grpc.insecure_channel(self._target)
            self._channel = channel
            try:
                fetch = channel.unary_stream(
                    METHOD,
                    request_serializer=lambda _req: b"",  # JWTBundlesRequest has no fields
                    response_deserializer=decode_bundles,
                )
                for response in fetch(None, metadata=SECURITY_HEADER):
                    jwks = response.get(self._td_id)
                    if jwks is None:
                        self.last_error = f"the agent sent no bundle for {self._td_id}"
                        continue
                    try:
                        self._keys = parse_jwks(json.loads(jwks))
                    except ValueError as exc:
                        self.last_error = f"bad bundle from the agent: {exc}"
                        continue  # keep the last good keys
                    self._ready.set()
                    delay = 0.2
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else None
                self.last_error = f"Workload API: {code.name if code else exc}"
            except ValueError as exc:
                self.last_error = f"Workload API answer unreadable: {exc}"
            finally:
                channel.close()
            # The stream ended or failed: keep the last keys and reconnect.
            self._stop.wait(delay)
            delay = min(delay * 2, 5.0)

    def close(self) -> None:
        self._stop.set()
        if self._channel is not None:
            self._channel.close()
        self._thread.join(timeout=5)
