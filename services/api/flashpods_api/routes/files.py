"""Sending a file's bytes: by sendfile where the server can, else in large blocks."""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

from flask import Response, request

FILE_BLOCK = 1024 * 1024


def file_response(fh: BinaryIO, length: int, headers: dict[str, str] | None = None) -> Response:
    """`length` bytes of an open file from its position, by sendfile where the server can.

    gunicorn's wsgi.file_wrapper goes to os.sendfile with count = Content-Length (the
    bytes never pass through Python); elsewhere the body is read in large blocks.
    """
    wrapper = request.environ.get("wsgi.file_wrapper")
    body = wrapper(fh, FILE_BLOCK) if wrapper else _read_exactly(fh, length)
    return Response(
        body,
        mimetype="application/octet-stream",
        headers={"Content-Length": str(length), **(headers or {})},
        direct_passthrough=True,
    )


def _read_exactly(fh: BinaryIO, length: int) -> Iterator[bytes]:
    with fh:
        while length > 0 and (block := fh.read(min(FILE_BLOCK, length))):
            length -= len(block)
            yield block
