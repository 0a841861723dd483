"""Per-job model usage and the token budget, as the credential proxy sees them.

The proxy reads the usage of every Messages API response (a JSON body, or the
server-sent events of a stream: `message_start` carries the input tokens, each
`message_delta` the output tokens so far) and keeps per job: requests, input and
output tokens (cache tokens apart). It writes `<usage_dir>/<job_id>.json` after every
response (temp + rename; 0640, group `socket_group`) so the API can show it and a
proxy restart continues from it.

Budget: `input_tokens + output_tokens` may not exceed the job's budget, the lower of
the host's `budget_tokens` and the job's own (job_budget.py: written by the API before
the job starts). Each request's `max_tokens` is clamped to what remains minus what
concurrent requests of the job have reserved; a job with nothing left is refused
(`budget_exhausted`). Input tokens are known only from the answer, so one request can
overshoot by its own input. `budget_exhausted` in the file means the usage reached the
budget (what the reaper stops the job for), never that reservations filled it.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from .identity import JOB_ID_RE
from .job_budget import read_job_budget


@dataclass
class Usage:
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    budget_tokens: int | None = None
    budget_exhausted: bool = False

    @property
    def used(self) -> int:
        return self.input_tokens + self.output_tokens


class UsageBook:
    def __init__(
        self,
        directory: str,
        budget_tokens: int | None,
        group: str | None = None,
        budget_dir: str | None = None,
    ):
        self.directory = Path(directory)
        self.budget = budget_tokens
        self.budget_dir = budget_dir
        # A job's own budget never changes once written: read once, kept. No file is
        # not kept (read again next call), nor is a file that failed its checks.
        self._job_budgets: dict[str, int] = {}
        self._gid = -1
        if group:
            with contextlib.suppress(KeyError):
                self._gid = grp.getgrnam(group).gr_gid
        self.directory.mkdir(mode=0o750, parents=True, exist_ok=True)
        if self._gid != -1:
            with contextlib.suppress(OSError):
                os.chown(self.directory, -1, self._gid)
                os.chmod(self.directory, 0o750)
        self._jobs: dict[str, Usage] = {}
        self._reserved: dict[str, int] = {}
        self._lock = threading.Lock()

    def _path(self, job_id: str) -> Path:
        if not JOB_ID_RE.match(job_id) or job_id.startswith("."):
            raise ValueError(f"not a job id: {job_id[:80]!r}")
        return self.directory / f"{job_id}.json"

    def _load(self, job_id: str) -> Usage:
        usage = self._jobs.get(job_id)
        if usage is None:
            path = self._path(job_id)  # a bad id raises here, never touches a file
            usage = Usage(budget_tokens=self.budget)
            with contextlib.suppress(OSError, ValueError, TypeError):
                data = json.loads(path.read_text())
                usage = Usage(**{k: data[k] for k in asdict(usage) if k in data})
                usage.budget_tokens = self.budget
            self._jobs[job_id] = usage
        return usage

    def budget_of(self, job_id: str) -> int | None:
        """The job's budget: the lower of the host's and its own; None: no cap.

        Raises job_budget.BudgetUnreadable when the job's file is there but untrusted."""
        own = self._job_budgets.get(job_id)
        if own is None and self.budget_dir is not None:
            own = read_job_budget(self.budget_dir, job_id)
            if own is not None:
                with self._lock:
                    self._job_budgets[job_id] = own
        if own is None:
            return self.budget
        return own if self.budget is None else min(own, self.budget)

    def get(self, job_id: str) -> Usage:
        with self._lock:
            return Usage(**asdict(self._load(job_id)))

    def reserve(self, job_id: str, max_tokens: int | None) -> int | None:
        """The max_tokens this request may ask for (None: no budget); 0: exhausted."""
        budget = self.budget_of(job_id)  # outside the lock: it may read a file
        with self._lock:
            usage = self._load(job_id)
            if budget is None:
                return max_tokens
            if usage.budget_tokens != budget:
                usage.budget_tokens = budget
                self._write(job_id, usage)
            left = budget - usage.used - self._reserved.get(job_id, 0)
            if left <= 0:
                if usage.used >= budget and not usage.budget_exhausted:
                    usage.budget_exhausted = True
                    self._write(job_id, usage)
                return 0
            granted = left if max_tokens is None else min(max_tokens, left)
            self._reserved[job_id] = self._reserved.get(job_id, 0) + granted
            return granted

    def _unreserve(self, job_id: str, reserved: int | None) -> None:
        if reserved:
            left = self._reserved.get(job_id, 0) - reserved
            if left > 0:
                self._reserved[job_id] = left
            else:
                self._reserved.pop(job_id, None)

    def release(self, job_id: str, reserved: int | None) -> None:
        """A request that got no answer: give its reservation back."""
        with self._lock:
            self._unreserve(job_id, reserved)

    def settle(self, job_id: str, reserved: int | None, seen: dict[str, int]) -> None:
        """One response is over: release its reservation, add what it used, write."""
        with self._lock:
            usage = self._load(job_id)
            self._unreserve(job_id, reserved)
            usage.requests += 1
            for key in (
                "input_tokens",
                "output_tokens",
                "cache_creation_input_tokens",
                "cache_read_input_tokens",
            ):
                value = seen.get(key)
                if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                    setattr(usage, key, getattr(usage, key) + value)
            budget = usage.budget_tokens
            if budget is not None and usage.used >= budget:
                usage.budget_exhausted = True
            self._write(job_id, usage)

    def _write(self, job_id: str, usage: Usage) -> None:
        path = self._path(job_id)
        tmp = path.with_name(f".{path.name}.tmp")
        with contextlib.suppress(OSError):
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o640)
            with os.fdopen(fd, "w") as fh:
                json.dump(asdict(usage), fh)
                fh.write("\n")
            if self._gid != -1:
                os.chown(tmp, -1, self._gid)
            os.rename(tmp, path)


class ResponseUsage:
    """Reads usage out of a Messages API response body as it streams past."""

    MAX_JSON = 8 * 1024 * 1024  # a non-streamed answer larger than this is not metered

    def __init__(self, content_type: str):
        self.sse = content_type.split(";")[0].strip().lower() == "text/event-stream"
        self.seen: dict[str, int] = {}
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        if not self.sse:
            if len(self._buf) + len(data) <= self.MAX_JSON:
                self._buf += data
            return
        self._buf += data
        while True:
            end = self._buf.find(b"\n")
            if end < 0:
                if len(self._buf) > self.MAX_JSON:
                    self._buf.clear()
                return
            line = bytes(self._buf[:end]).rstrip(b"\r")
            del self._buf[: end + 1]
            if line.startswith(b"data:"):
                self._event(line[5:].strip())

    def _event(self, raw: bytes) -> None:
        try:
            event = json.loads(raw)
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        if event.get("type") == "message_start" and isinstance(event.get("message"), dict):
            self._take(event["message"].get("usage"))
        elif event.get("type") == "message_delta":
            # Cumulative counts: the last one wins.
            self._take(event.get("usage"))

    def _take(self, usage: object) -> None:
        if not isinstance(usage, dict):
            return
        for key, value in usage.items():
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                self.seen[key] = value

    def finish(self) -> dict[str, int]:
        if not self.sse and self._buf:
            with contextlib.suppress(ValueError):
                body = json.loads(bytes(self._buf))
                if isinstance(body, dict):
                    self._take(body.get("usage"))
        return self.seen
