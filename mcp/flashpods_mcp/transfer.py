"""Uploads with the system rsync to the host's rsync daemon.

Each upload goes into a fresh upload id. When the host still keeps the previous upload
of the same source directory, it hands back a `link_dest` (relative to the new upload
directory, see docs/design.md "Upload bases") and rsync hard-links every unchanged file
from it instead of sending it, so an unchanged tree costs only the file list.

The size cap is checked with a local dry run using the same filter rules, so what is
measured is exactly what would be sent. The dry run overlaps the upload (`SizeCheck`):
on an unchanged tree it cost as much as the upload's own file list (bench P3, issue 18).
A tree over the cap still sends no file data in practice: the upload builds and sends
its whole file list first (`--no-inc-recursive`), by which time the local walk has
answered and the upload is stopped; an upload stopped that way is never used by a job
and the host expires it.
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from .errors import FlashpodsError

RSYNC_CONNECT_TIMEOUT_S = 10
RSYNC_IO_TIMEOUT_S = 120
# rsync's progress2 line: "    1,234,567  45%   12.34MB/s    0:00:01 (xfr#3, to-chk=0/10)"
PROGRESS_RE = re.compile(rb"^\s*([\d,]+)\s+(\d+)%")
ARTIFACTS_DIR_NAME = "flashpods-artifacts"

ProgressFn = Callable[[int, int | None, str], None]


@dataclass(frozen=True)
class TreeSize:
    bytes: int
    files: int


@dataclass(frozen=True)
class UploadStats:
    files: int
    files_transferred: int
    total_size: int
    literal_bytes: int
    bytes_sent: int


def rsync_binary() -> str:
    found = shutil.which("rsync")
    if not found:
        raise FlashpodsError("The rsync program is not installed on this machine; install rsync.")
    return found


def filter_args(exclude: Sequence[str] = (), include_git: bool = False) -> list[str]:
    """Default excludes: .git (unless asked), .gitignore patterns, our own artifact dir."""
    args = []
    if not include_git:
        args.append("--exclude=/.git/")
    # ':- .gitignore' = per-directory merge of exclude-only rules, like git does.
    args.append("--filter=:- .gitignore")
    args.append(f"--exclude=/{ARTIFACTS_DIR_NAME}/")
    for pattern in exclude:
        if not isinstance(pattern, str) or not pattern.strip() or "\n" in pattern:
            raise FlashpodsError(
                f"Exclude pattern {pattern!r} is not usable; give rsync-style patterns "
                "such as 'node_modules/' or '*.log'."
            )
        args.append(f"--exclude={pattern}")
    return args


def _number(text: bytes | str, label: str) -> int:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    match = re.search(rf"^{re.escape(label)}:\s*([\d,]+)", text, re.MULTILINE)
    return int(match.group(1).replace(",", "")) if match else 0


def parse_stats(text: bytes | str) -> UploadStats:
    return UploadStats(
        files=_number(text, "Number of files"),
        files_transferred=_number(text, "Number of regular files transferred"),
        total_size=_number(text, "Total file size"),
        literal_bytes=_number(text, "Literal data"),
        bytes_sent=_number(text, "Total bytes sent"),
    )


def measure(source: Path, filters: Sequence[str]) -> TreeSize:
    """What would be sent, with the real filter rules: an rsync dry run into an empty dir."""
    with tempfile.TemporaryDirectory(prefix="flashpods-measure-") as empty:
        done = subprocess.run(
            [
                rsync_binary(),
                "-a",
                "--dry-run",
                "--stats",
                *filters,
                f"{source}/",
                f"{empty}/",
            ],
            capture_output=True,
            timeout=300,
        )
    if done.returncode != 0:
        raise FlashpodsError(
            f"Cannot read {source} for upload: {_last_line(done.stderr)}; check the "
            "directory and its permissions."
        )
    stats = parse_stats(done.stdout)
    return TreeSize(bytes=stats.total_size, files=stats.files)


def check_size(source: Path, size: TreeSize, cap: int) -> None:
    if size.bytes > cap:
        raise FlashpodsError(
            f"{source} holds {size.bytes:,} bytes to upload (after excludes), more than "
            f"the cap of {cap:,} bytes; add exclude patterns (e.g. build output, data "
            "sets) or raise FLASHPODS_MAX_UPLOAD_BYTES up to the host's upload limit."
        )


class SizeCheck:
    """`measure` + `check_size` on a thread of their own, started now; `attach` hands
    over the upload's rsync, which is killed as soon as the check fails (or at once if
    it already has). `result` waits for the check and raises its error."""

    def __init__(self, source: Path, filters: Sequence[str], cap: int) -> None:
        self._source, self._filters, self._cap = source, filters, cap
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._process: subprocess.Popen[bytes] | None = None
        self._size: TreeSize | None = None
        self._error: FlashpodsError | None = None
        threading.Thread(target=self._run, name="flashpods-measure", daemon=True).start()

    def _run(self) -> None:
        try:
            size = measure(self._source, self._filters)
            check_size(self._source, size, self._cap)
            self._size = size
        except FlashpodsError as exc:
            self._error = exc
        except Exception as exc:  # noqa: BLE001 - any failure must stop the upload too
            self._error = FlashpodsError(f"Cannot measure {self._source} for upload: {exc}.")
        with self._lock:
            self._done.set()
            if self._error is not None and self._process is not None:
                _kill(self._process)

    def attach(self, process: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._process = process
            if self._done.is_set() and self._error is not None:
                _kill(self._process)

    def failed(self) -> bool:
        return self._done.is_set() and self._error is not None

    def result(self) -> TreeSize:
        self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._size is not None
        return self._size


def _kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()


def upload(
    source: Path,
    rsync_base: str,
    upload_id: str,
    filters: Sequence[str],
    link_dest: str | None = None,
    progress: ProgressFn | None = None,
    total_hint: int | None = None,
    on_start: Callable[[subprocess.Popen[bytes]], None] | None = None,
) -> UploadStats:
    """rsync -a --delete SOURCE/ into rsync_base/upload_id/; returns rsync's statistics.

    `on_start` gets the rsync process as soon as it runs (a `SizeCheck` may kill it)."""
    target = f"{rsync_base.rstrip('/')}/{upload_id}/"
    argv = [
        rsync_binary(),
        "-a",
        "--delete",
        "--stats",
        "--info=progress2",
        # Without incremental recursion progress2's percentage covers the whole tree.
        "--no-inc-recursive",
        f"--contimeout={RSYNC_CONNECT_TIMEOUT_S}",
        f"--timeout={RSYNC_IO_TIMEOUT_S}",
    ]
    if link_dest:
        argv.append(f"--link-dest={link_dest}")
    argv += [*filters, f"{source}/", target]

    output = bytearray()
    errors: list[bytes] = []
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
    ) as process:
        if on_start is not None:
            on_start(process)
        assert process.stdout is not None and process.stderr is not None
        stderr_pipe = process.stderr
        stdout = cast(io.BufferedReader, process.stdout)  # bytes, buffered: read1 is there
        # Drain stderr on the side so a chatty rsync can never block on a full pipe.
        drain = threading.Thread(target=lambda: errors.append(stderr_pipe.read()), daemon=True)
        drain.start()
        pending = b""
        while chunk := stdout.read1(65536):
            output += chunk
            pending += chunk
            *lines, pending = re.split(rb"[\r\n]", pending)
            for line in lines:
                match = PROGRESS_RE.match(line)
                if match and progress:
                    done_bytes = int(match.group(1).replace(b",", b""))
                    percent = int(match.group(2))
                    total = total_hint or (done_bytes * 100 // percent if percent else None)
                    progress(done_bytes, total, f"uploading {source.name}: {percent}%")
        code = process.wait()
        drain.join()
    stderr = b"".join(errors)
    if code != 0:
        raise rsync_error(code, stderr, target)
    return parse_stats(bytes(output))


def _last_line(stderr: bytes) -> str:
    lines = [ln.strip() for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith("rsync error:")] or lines
    return useful[0] if useful else "no message"


def rsync_error(code: int, stderr: bytes, target: str) -> FlashpodsError:
    text = stderr.decode("utf-8", "replace")
    if "@ERROR: Unknown module" in text:
        return FlashpodsError(
            f"The rsync daemon refused the upload to {target}: it has no such module; "
            "FLASHPODS_RSYNC_URL must end in the host's upload module (…/uploads)."
        )
    if "@ERROR" in text:
        return FlashpodsError(
            f"The rsync daemon refused the upload to {target}: {_last_line(stderr)}."
        )
    if "Connection refused" in text or "failed to connect" in text or code in (5, 10):
        return FlashpodsError(
            f"The rsync daemon refused the connection for {target}: is the WireGuard "
            "tunnel up and rsyncd running on the host? check FLASHPODS_RSYNC_URL "
            f"({_last_line(stderr)})."
        )
    if code in (30, 35):
        return FlashpodsError(
            f"The upload to {target} timed out (rsync exit {code}); check the tunnel and retry."
        )
    return FlashpodsError(
        f"The upload to {target} failed (rsync exit {code}): {_last_line(stderr)}."
    )
