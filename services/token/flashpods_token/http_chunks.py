"""HTTP/1.1 chunked framing, decoded incrementally and strictly.

One decoder for what the proxy reads of a body: a push's command list (github_scope)
and a model answer's usage (proxy_meter). Strict, as a strict server would be: what the
proxy checks or counts must be what the other end reads, and a lenient decoder would let
the two differ."""

from __future__ import annotations

import re


class ChunkDecoder:
    """Decodes chunked framing and refuses anything a strict server would: a size that is
    not plain hex, data not followed by CRLF, an overlong size or trailer line. What we
    check must be what upstream reads; a lenient decoder would let the two differ."""

    SIZE = re.compile(rb"([0-9a-fA-F]{1,8})(;[^\r\n]*)?")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._left = 0
        self._state = "size"
        self.done = False

    def feed(self, data: bytes) -> bytes:
        self._buf += data
        out = bytearray()
        while not self.done:
            if self._state in ("size", "trailer"):
                end = self._buf.find(b"\r\n")
                if end < 0:
                    if len(self._buf) > 4096:
                        raise ValueError("a chunk size or trailer line is too long")
                    break
                line = bytes(self._buf[:end])
                del self._buf[: end + 2]
                if self._state == "trailer":
                    self.done = not line
                    continue
                m = self.SIZE.fullmatch(line)
                if not m:
                    raise ValueError("a chunk size is not hex")
                self._left = int(m.group(1), 16)
                self._state = "data" if self._left else "trailer"
            elif self._state == "data":
                if not self._buf:
                    break
                take = min(self._left, len(self._buf))
                out += self._buf[:take]
                del self._buf[:take]
                self._left -= take
                if not self._left:
                    self._state = "crlf"
            else:
                if len(self._buf) < 2:
                    break
                if self._buf[:2] != b"\r\n":
                    raise ValueError("chunk data not followed by CRLF")
                del self._buf[:2]
                self._state = "size"
        return bytes(out)
