"""What each tool does, shared by the MCP server and the CLI.

Plain blocking code: the MCP server calls it in worker threads, the CLI directly.
Paths arrive here already confined (see confine.py).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import transfer
from .bases import BasisMemory
from .client import ApiClient, check_job_id
from .config import Settings
from .errors import FlashpodsError
from .unpack import UnpackLimits, UnpackResult, safe_extract_stream

ProgressFn = Callable[[int, int | None, str], None]
LOG_CHUNK = 256 * 1024
MAX_WAIT_S = 300.0
POLL_INTERVAL_S = 0.5
FOLLOW_WAIT_S = 25.0  # one server-side wait per request while following
TAIL_WINDOW = 256 * 1024
MAX_TAIL_SCAN = 64 * 1024 * 1024
FINAL_STATES = {"succeeded", "failed", "timed_out", "killed", "lost"}


@dataclass(frozen=True)
class UploadReport:
    upload_id: str
    source: str
    files: int
    total_bytes: int
    bytes_sent: int
    basis: str | None
    linked_from_basis: bool


@dataclass(frozen=True)
class Output:
    job_id: str
    text: str
    offset: int
    next_offset: int
    final: bool


class Flashpods:
    def __init__(self, settings: Settings, api: ApiClient | None = None):
        self.settings = settings
        self.api = api or ApiClient(settings)
        self.bases = BasisMemory(settings.cache_dir / "bases.json")

    # -- spawning -----------------------------------------------------------------

    def upload_dir(
        self,
        source: Path,
        exclude: Sequence[str] = (),
        include_git: bool = False,
        progress: ProgressFn | None = None,
    ) -> UploadReport:
        if not source.is_dir():
            raise FlashpodsError(f"{source} is not a directory; give the directory to upload.")
        filters = transfer.filter_args(exclude, include_git)
        # The size check runs beside the upload, not before it (see transfer.SizeCheck).
        size_check = transfer.SizeCheck(source, filters, self.settings.max_upload_bytes)
        if progress:
            progress(0, None, f"uploading {source.name}")

        basis = self.bases.get(self.settings.api_url, source)
        answer = self.api.create_upload(basis)
        link_dest = answer.get("link_dest")
        if not isinstance(link_dest, str) or not link_dest or "\n" in link_dest:
            link_dest = None
        if size_check.failed():
            size_check.result()  # raises: too large or unreadable, before rsync starts
        try:
            stats = transfer.upload(
                source,
                self.settings.rsync_url,
                answer["upload_id"],
                filters,
                link_dest=link_dest,
                progress=progress,
                on_start=size_check.attach,
            )
        except FlashpodsError:
            size_check.result()  # a refused size is the cause to report, not the killed rsync
            raise
        size_check.result()
        return UploadReport(
            upload_id=answer["upload_id"],
            source=str(source),
            files=stats.files,
            total_bytes=stats.total_size,
            bytes_sent=stats.bytes_sent,
            basis=basis,
            linked_from_basis=link_dest is not None,
        )

    def _check_env(self, env: Mapping[str, str] | None) -> dict[str, str] | None:
        if not env:
            return None
        token = None
        try:
            token = self.settings.token()
        except FlashpodsError:
            token = None
        clean = {}
        for key, value in env.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise FlashpodsError("env must map variable names to string values.")
            # The API token never goes into a job, whatever the caller was told to do.
            if token and token in value:
                raise FlashpodsError(
                    f"Refused env {key}: its value contains the Flashpods API token, "
                    "which never leaves this machine."
                )
            clean[key] = value
        return clean

    def spawn(
        self,
        kind: str,
        *,
        command: str | None = None,
        prompt: str | None = None,
        source: Path | None = None,
        exclude: Sequence[str] = (),
        include_git: bool = False,
        image: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout_s: int | None = None,
        cpus: float | None = None,
        memory: int | None = None,
        budget_tokens: int | None = None,
        progress: ProgressFn | None = None,
    ) -> tuple[dict[str, Any], UploadReport | None]:
        request: dict[str, Any] = {"kind": kind}
        if kind == "worker":
            if not command or not command.strip():
                raise FlashpodsError("command is empty; give the shell command to run.")
            request["command"] = command
        else:
            if not prompt or not prompt.strip():
                raise FlashpodsError("prompt is empty; say what the sub-agent should do.")
            request["prompt"] = prompt
        clean_env = self._check_env(env)
        if clean_env:
            request["env"] = clean_env
        if image:
            request["image"] = image
        if timeout_s is not None:
            request["timeout_s"] = timeout_s
        if budget_tokens is not None:
            request["budget_tokens"] = budget_tokens
        resources = {k: v for k, v in (("cpus", cpus), ("memory", memory)) if v is not None}
        if resources:
            request["resources"] = resources

        report: UploadReport | None = None
        if source is not None:
            report = self.upload_dir(source, exclude, include_git, progress)
            request["upload_id"] = report.upload_id
        job = self.api.create_job(request)
        if source is not None and report is not None:
            # Only an upload a job used is kept on the host as the next basis.
            self.bases.put(self.settings.api_url, source, report.upload_id)
        return job, report

    # -- following ----------------------------------------------------------------

    def read_output(
        self,
        job_id: str,
        offset: int | None = None,
        tail_lines: int | None = None,
        wait_s: float = 0.0,
        max_bytes: int = 64 * 1024,
    ) -> Output:
        check_job_id(job_id)
        if tail_lines is not None and offset is not None:
            raise FlashpodsError("Give offset or tail_lines, not both.")
        if tail_lines is not None:
            return self._tail(job_id, tail_lines)
        start = offset or 0
        deadline = time.monotonic() + min(max(wait_s, 0.0), MAX_WAIT_S)
        while True:
            # The host waits (issue 18): it answers when bytes arrive or the job ends, at
            # most its own maximum per request; this loop only covers a longer wait_s.
            left = deadline - time.monotonic()
            asked = time.monotonic()
            chunk = self.api.logs(job_id, start, max_bytes, wait_s=max(left, 0.0))
            if chunk.data or chunk.final or time.monotonic() >= deadline:
                return Output(
                    job_id=job_id,
                    text=chunk.data.decode("utf-8", "replace"),
                    offset=chunk.offset,
                    next_offset=chunk.next_offset,
                    final=chunk.final,
                )
            if time.monotonic() - asked < min(left, 1.0) / 2:
                # Answered early with nothing: a host that does not wait (older, or
                # all its waiting slots taken). Poll it, gently.
                time.sleep(min(POLL_INTERVAL_S, max(deadline - time.monotonic(), 0.01)))

    def _read_from(self, job_id: str, start: int) -> tuple[bytes, int, bool]:
        data = bytearray()
        offset = start
        while True:
            chunk = self.api.logs(job_id, offset, LOG_CHUNK)
            data += chunk.data
            offset = chunk.next_offset
            if not chunk.data or chunk.final or len(data) > MAX_TAIL_SCAN:
                return bytes(data), offset, chunk.final

    def _tail(self, job_id: str, lines: int) -> Output:
        if lines < 1:
            raise FlashpodsError("tail_lines must be at least 1.")
        size = int(self.api.get_job(job_id).get("log_bytes") or 0)
        start = max(0, size - TAIL_WINDOW)
        while True:
            data, next_offset, final = self._read_from(job_id, start)
            parts = data.splitlines(keepends=True)
            if start > 0:
                parts = parts[1:]  # the first line of a window may be cut
            if len(parts) >= lines or start == 0:
                kept = collections.deque(parts, maxlen=lines)
                text = b"".join(kept)
                return Output(
                    job_id=job_id,
                    text=text.decode("utf-8", "replace"),
                    offset=next_offset - len(text),
                    next_offset=next_offset,
                    final=final,
                )
            start = 0

    def follow(self, job_id: str, write: Callable[[bytes], None], offset: int = 0) -> int:
        """Write the log as it grows until the job is final; returns the next offset."""
        check_job_id(job_id)
        while True:
            asked = time.monotonic()
            chunk = self.api.logs(job_id, offset, LOG_CHUNK, wait_s=FOLLOW_WAIT_S)
            if chunk.data:
                write(chunk.data)
            offset = chunk.next_offset
            if chunk.final and not chunk.data:
                return offset
            if not chunk.data and time.monotonic() - asked < 1.0:
                time.sleep(POLL_INTERVAL_S)  # a host that did not wait: poll it, gently

    # -- artifacts ----------------------------------------------------------------

    def fetch_artifacts(
        self,
        job_id: str,
        dest: Path,
        progress: ProgressFn | None = None,
        within: Path | None = None,
        limits: UnpackLimits | None = None,
    ) -> UnpackResult:
        """Download and unpack into `dest`; with `within` (the MCP root dest lies in),
        nothing is created outside that directory, not even the staging directory."""
        check_job_id(job_id)

        def report(done: int, total: int | None) -> None:
            if progress:
                progress(done, total, f"downloading artifacts of {job_id}")

        # One pass: unpacked as it downloads, into a staging directory that is moved into
        # dest only once the whole archive has arrived and checked out (unpack.py).
        with self.api.open_artifacts_tar(job_id, report) as readinto:
            return safe_extract_stream(readinto, dest, within, limits)
