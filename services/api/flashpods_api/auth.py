"""Bearer-token check (constant time) and the optional allow-list of peer addresses."""

from __future__ import annotations

import hmac
from pathlib import Path

from .errors import ApiError


def read_token(path: str) -> bytes:
    try:
        token = Path(path).read_bytes().strip()
    except OSError as exc:
        raise RuntimeError(f"Cannot read the API token file {path}: {exc.strerror}.") from exc
    if len(token) < 16:
        raise RuntimeError(
            f"The API token in {path} is shorter than 16 characters; write a long random token."
        )
    return token


def check(
    header: str | None, token: bytes, remote_addr: str | None, allowed_peers: list[str]
) -> None:
    if allowed_peers and remote_addr not in allowed_peers:
        raise ApiError(
            403,
            "peer_not_allowed",
            "This address may not use the Flashpods API; connect over the tunnel.",
        )
    if not header or not header.startswith("Bearer "):
        raise ApiError(
            401,
            "unauthorized",
            "Send the API token as 'Authorization: Bearer <token>' (see FLASHPODS_API_TOKEN_FILE).",
        )
    given = header[len("Bearer ") :].strip().encode("utf-8", "surrogateescape")
    if not hmac.compare_digest(given, token):
        raise ApiError(
            401,
            "unauthorized",
            "The API token is wrong; use the token from this host's token file.",
        )
