"""HTTP client for the Flashpods API: every failure becomes a sentence.

Blocking on purpose (requests): the MCP server runs these calls in worker threads so
its event loop keeps serving progress notifications, and the CLI calls them directly.
Every request has a timeout. The token goes only into the Authorization header; no
error message repeats it.
"""

from __future__ import annotations

import contextlib
import http.client
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import requests
import urllib3

from .config import Settings
from .errors import FlashpodsError

JOB_ID_RE = re.compile(r"^job_[a-z0-9]{12}$")
UPLOAD_ID_RE = re.compile(r"^up_[a-z0-9]{16}$")
CONNECT_TIMEOUT_S = 5.0
# The longest wait the API holds a request for (flashpods_api.waiting.MAX_WAIT_S).
SERVER_MAX_WAIT_S = 30.0


@dataclass(frozen=True)
class LogChunk:
    data: bytes
    offset: int
    next_offset: int
    final: bool


def check_job_id(job_id: str) -> str:
    """Ids go into URL paths: refuse anything but the exact pattern before any request."""
    if not isinstance(job_id, str) or not JOB_ID_RE.match(job_id):
        raise FlashpodsError(
            f"{job_id!r} is not a job id; job ids look like job_0123456789ab "
            "(list_jobs shows them)."
        )
    return job_id


def direct_session() -> requests.Session:
    """A session that ignores the environment: the API is reached over WireGuard (or
    loopback), never through an HTTP(S)_PROXY meant for the internet, which would see the
    bearer token (and cannot reach the tunnel's address anyway); nor does a ~/.netrc
    login for the host replace that token."""
    session = requests.Session()
    session.trust_env = False
    return session


def dropped_connection(exc: requests.exceptions.ConnectionError) -> bool:
    """The server reset or closed a kept-alive connection as the request went out on it.

    gunicorn closes a connection idle for its keep-alive time (2 s); a request already on
    its way then meets a reset (seen under load in CI). Sent again on a new connection it
    is answered. Only for GET and HEAD: a POST or DELETE may have been acted on."""
    cause = exc.args[0] if exc.args else None
    return isinstance(cause, urllib3.exceptions.ProtocolError)


class ApiClient:
    def __init__(self, settings: Settings, session: requests.Session | None = None):
        self.settings = settings
        self.base = settings.api_url
        self.session = session or direct_session()

    # -- plumbing -----------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self.settings.token()}",
            "Accept": "application/json",
        }

    def _request(
        self,
        method: str,
        path: str,
        *,
        job_id: str | None = None,
        read_timeout: float | None = None,
        stream: bool = False,
        **kwargs: Any,
    ) -> requests.Response:
        url = f"{self.base}{path}"
        timeout = (CONNECT_TIMEOUT_S, read_timeout or self.settings.http_timeout_s)
        try:
            response = self._send(method, url, timeout, stream, kwargs)
        except requests.exceptions.ConnectTimeout as exc:
            raise FlashpodsError(
                f"The Flashpods API did not accept a connection within {CONNECT_TIMEOUT_S:g} s: "
                f"is the WireGuard tunnel up (or the dev host running)? tried {self.base}"
            ) from exc
        except requests.exceptions.ConnectionError as exc:
            raise FlashpodsError(
                "Cannot reach the Flashpods API: is the WireGuard tunnel up (or the dev "
                f"host running)? tried {self.base}"
            ) from exc
        except requests.exceptions.Timeout as exc:
            raise FlashpodsError(
                f"The Flashpods API at {self.base} did not answer within "
                f"{timeout[1]:g} s; the host may be overloaded, retry (or raise "
                "FLASHPODS_HTTP_TIMEOUT_S)."
            ) from exc
        except requests.exceptions.RequestException as exc:
            raise FlashpodsError(f"Request to {url} failed: {exc.__class__.__name__}.") from exc
        if response.status_code >= 400:
            try:
                raise api_error(response, self.base, job_id)
            finally:
                response.close()
        return response

    def _send(
        self,
        method: str,
        url: str,
        timeout: tuple[float, float],
        stream: bool,
        kwargs: dict[str, Any],
    ) -> requests.Response:
        """One request; a GET or HEAD once more if the server dropped the pooled
        connection it went out on (see `dropped_connection`)."""
        attempts = 2 if method in ("GET", "HEAD") else 1
        for attempt in range(attempts):
            try:
                return self.session.request(
                    method, url, headers=self._headers(), timeout=timeout, stream=stream, **kwargs
                )
            except requests.exceptions.ConnectionError as exc:
                if attempt + 1 == attempts or not dropped_connection(exc):
                    raise
        raise AssertionError("unreachable")

    def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = self._request(method, path, **kwargs)
        try:
            body = response.json()
        except ValueError as exc:
            raise FlashpodsError(
                f"The Flashpods API at {self.base} answered {method} {path} with "
                f"something that is not JSON (status {response.status_code}); is "
                "FLASHPODS_API_URL really the Flashpods API?"
            ) from exc
        if not isinstance(body, dict):
            raise FlashpodsError(f"Unexpected answer from {self.base}{path}: not a JSON object.")
        return body

    # -- routes -------------------------------------------------------------------

    def create_upload(self, basis: str | None = None) -> dict[str, Any]:
        body = {"basis": basis} if basis else {}
        answer = self._json("POST", "/uploads", json=body)
        if not UPLOAD_ID_RE.match(str(answer.get("upload_id", ""))):
            raise FlashpodsError(
                f"The API at {self.base} returned no valid upload id for POST /uploads."
            )
        return answer

    def create_job(self, request: dict[str, Any]) -> dict[str, Any]:
        answer = self._json("POST", "/jobs", json=request)
        return answer.get("job", answer)

    def get_job(self, job_id: str) -> dict[str, Any]:
        answer = self._json("GET", f"/jobs/{check_job_id(job_id)}", job_id=job_id)
        return answer.get("job", answer)

    def list_jobs(self, status: str | None = None, limit: int | None = None) -> list[dict]:
        params: dict[str, Any] = {}
        if status:
            params["status"] = status
        if limit:
            params["limit"] = limit
        answer = self._json("GET", "/jobs", params=params)
        jobs = answer.get("jobs", [])
        return jobs if isinstance(jobs, list) else []

    def kill_job(self, job_id: str) -> dict[str, Any]:
        answer = self._json("POST", f"/jobs/{check_job_id(job_id)}/kill", job_id=job_id)
        return answer.get("job", answer)

    def logs(
        self, job_id: str, offset: int = 0, limit: int | None = None, wait_s: float = 0.0
    ) -> LogChunk:
        """A page of the log; with `wait_s` the host answers once there are bytes past
        `offset` or the job is final (a server-side wait, at most SERVER_MAX_WAIT_S)."""
        params: dict[str, Any] = {"offset": offset}
        if limit:
            params["limit"] = limit
        read_timeout = None
        if wait_s > 0:
            wait_s = min(wait_s, SERVER_MAX_WAIT_S)
            params["wait_s"] = f"{wait_s:g}"
            read_timeout = self.settings.http_timeout_s + wait_s
        response = self._request(
            "GET",
            f"/jobs/{check_job_id(job_id)}/logs",
            job_id=job_id,
            params=params,
            read_timeout=read_timeout,
        )
        return parse_log_chunk(response, offset)

    def list_artifacts(self, job_id: str) -> list[dict[str, Any]]:
        answer = self._json("GET", f"/jobs/{check_job_id(job_id)}/artifacts", job_id=job_id)
        files = answer.get("artifacts", answer.get("files", []))
        return files if isinstance(files, list) else []

    @contextlib.contextmanager
    def open_artifacts_tar(
        self, job_id: str, progress: Callable[[int, int | None], None] | None = None
    ) -> Iterator[Callable[[memoryview], int]]:
        """The artifact tarball as a `readinto(buffer)` over the open response: the caller
        unpacks while it downloads, so the bytes are never stored twice."""
        response = self._request(
            "GET",
            f"/jobs/{check_job_id(job_id)}/artifacts.tar",
            job_id=job_id,
            stream=True,
        )
        try:
            yield ResponseBody(response, f"{job_id} from {self.base}", progress).readinto
        finally:
            response.close()


class ResponseBody:
    """readinto(buffer) straight from the response: counts bytes for the progress
    callback and checks at the end that as many arrived as Content-Length promised.

    The bytes come from the http.client response under urllib3's, into the caller's
    buffer: urllib3's own read(n) returns a fresh bytes object per call and its
    readinto copies that once more, which cost ~20% of a 64 MiB artifact download
    (bench/history.md). http.client still does the framing (Content-Length, chunked).
    Should a urllib3 release stop exposing it, the slower read(n) path is taken.
    """

    def __init__(
        self,
        response: requests.Response,
        what: str,
        progress: Callable[[int, int | None], None] | None,
    ):
        total = response.headers.get("Content-Length")
        self.total = int(total) if total and total.isdigit() else None
        self.done = 0
        self._raw = response.raw
        self._fast = underlying_http_response(response.raw)
        self._what = what
        self._progress = progress

    def readinto(self, buffer: memoryview) -> int:
        try:
            if self._fast is not None:
                n = self._fast.readinto(buffer)
            else:
                # decode_content=False: the bytes as sent (the unpacker recognises compression).
                data = self._raw.read(len(buffer), decode_content=False)
                n = len(data)
                buffer[:n] = data
        except (
            requests.exceptions.RequestException,
            urllib3.exceptions.HTTPError,
            http.client.HTTPException,
            OSError,
        ) as exc:
            raise self._broke_off() from exc
        if n:
            self.done += n
            if self._progress:
                self._progress(self.done, self.total)
        elif self.total is not None and self.done != self.total:
            raise self._broke_off()
        return n

    def _broke_off(self) -> FlashpodsError:
        return FlashpodsError(
            f"The artifact download of {self._what} broke off after {self.done} bytes; "
            "retry get_job_artifacts."
        )


def underlying_http_response(raw: urllib3.BaseHTTPResponse) -> http.client.HTTPResponse | None:
    """The http.client response urllib3 reads from (urllib3 1.x and 2.x keep it in _fp),
    or None when this urllib3 does not."""
    underlying = getattr(raw, "_fp", None)
    return underlying if isinstance(underlying, http.client.HTTPResponse) else None


def parse_log_chunk(response: requests.Response, offset: int) -> LogChunk:
    """The logs route answers JSON {data|text, offset, next_offset, final}."""
    try:
        body = response.json()
    except ValueError as exc:
        raise FlashpodsError(
            f"The logs answer from {response.url} is not JSON; is FLASHPODS_API_URL "
            "the Flashpods API?"
        ) from exc
    text = body.get("data", body.get("text", ""))
    data = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else b""
    start = int(body.get("offset", offset))
    return LogChunk(
        data=data,
        offset=start,
        next_offset=int(body.get("next_offset", start + len(data))),
        final=bool(body.get("final", False)),
    )


def api_error(response: requests.Response, base: str, job_id: str | None) -> FlashpodsError:
    """Map an HTTP error to the sentence the agent needs (status first, API text second)."""
    status = response.status_code
    detail = ""
    try:
        body = response.json()
        if isinstance(body, dict):
            detail = str(body.get("error") or "")
    except ValueError:
        detail = ""
    suffix = f" (host says: {detail})" if detail else ""

    if status == 401:
        return FlashpodsError(
            "The host refused the API token: FLASHPODS_API_TOKEN does not match the "
            f"host's token file (tried {base})."
        )
    if status == 403:
        return FlashpodsError(
            f"The host at {base} refused this laptop's address{suffix}; check the "
            "host's allowed_peers."
        )
    if status == 404 and job_id:
        return FlashpodsError(
            f"Unknown job {job_id}: the host at {base} has no such job (it may have "
            "expired); list_jobs shows the jobs it knows."
        )
    if status == 404:
        return FlashpodsError(
            f"{response.request.method} {response.request.path_url} is not a route of "
            f"the API at {base}{suffix}; is FLASHPODS_API_URL the Flashpods API?"
        )
    if status == 410:
        return FlashpodsError(detail or f"That is gone from the host at {base} (410).")
    if status == 413:
        return FlashpodsError(f"Too large for the host{suffix or '.'}")
    if status == 429:
        return FlashpodsError(
            f"The host's job queue is full{suffix}; wait for jobs to finish or kill "
            "some (list_jobs, kill_job), then retry."
        )
    if status == 409:
        return FlashpodsError(
            detail or f"The request conflicts with the job's state (409 from {base})."
        )
    if status == 400:
        return FlashpodsError(
            detail or f"The host rejected the request as bad input (400 from {base})."
        )
    if status == 503:
        return FlashpodsError(
            f"The host at {base} is not ready{suffix}; retry in a moment or check the "
            "host's /healthz."
        )
    return FlashpodsError(f"The Flashpods API at {base} failed with HTTP {status}{suffix}.")


def healthz(settings: Settings) -> dict[str, Any]:
    """GET /healthz needs no token; used by `flashpods status` style checks."""
    try:
        response = requests.get(
            f"{settings.api_url}/healthz",
            timeout=(CONNECT_TIMEOUT_S, settings.http_timeout_s),
        )
    except requests.exceptions.RequestException as exc:
        raise FlashpodsError(
            "Cannot reach the Flashpods API: is the WireGuard tunnel up (or the dev "
            f"host running)? tried {settings.api_url}"
        ) from exc
    try:
        return response.json()
    except ValueError:
        return {"status": response.status_code}
