"""`flashpods`: the same client for humans at a terminal.

    flashpods jobs [--status S] [--limit N]      a table of jobs
    flashpods status ID                          one job
    flashpods logs ID [-f] [--tail N]            output (follow with -f)
    flashpods artifacts ID [DEST]                download + unpack /artifacts
    flashpods kill ID
    flashpods run [options] -- COMMAND...        upload the current dir, run, follow,
                                                 exit with the job's exit code

Paths are a human's choice here, so no MCP-roots check; the secret locations
(~/.ssh, ~/.gnupg, ~/.aws, the config dir and token) are refused all the same.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from .config import load_settings
from .confine import confine
from .errors import FlashpodsError
from .models import JobInfo
from .operations import FINAL_STATES, Flashpods, ProgressFn
from .transfer import ARTIFACTS_DIR_NAME

err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)
# What `run` exits with when the job has no exit code of its own (like timeout(1), kill -9).
EXIT_TIMED_OUT = 124
EXIT_KILLED = 137


@contextmanager
def progress_bar(label: str) -> Iterator[ProgressFn]:
    """A rich progress bar on stderr; yields the (done, total, message) callback."""
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int | None, message: str) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def cmd_jobs(fp: Flashpods, args: argparse.Namespace) -> int:
    jobs = [JobInfo.from_api(j) for j in fp.api.list_jobs(args.status, args.limit)]
    table = Table("id", "kind", "status", "exit", "created", "error")
    for j in jobs:
        table.add_row(
            j.id,
            j.kind or "",
            j.status,
            "" if j.exit_code is None else str(j.exit_code),
            str(j.created_at or ""),
            j.error or "",
        )
    out.print(table)
    return 0


def cmd_status(fp: Flashpods, args: argparse.Namespace) -> int:
    job = JobInfo.from_api(fp.api.get_job(args.job_id))
    for key, value in job.model_dump().items():
        if value is not None:
            out.print(f"{key:15} {value}", highlight=False)
    return 0


def _write_raw(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def cmd_logs(fp: Flashpods, args: argparse.Namespace) -> int:
    if args.follow:
        fp.follow(args.job_id, _write_raw)
        return 0
    if args.tail:
        _write_raw(fp.read_output(args.job_id, tail_lines=args.tail).text.encode())
        return 0
    offset = 0
    while True:
        chunk = fp.api.logs(args.job_id, offset)
        _write_raw(chunk.data)
        offset = chunk.next_offset
        if not chunk.data:
            return 0


def cmd_artifacts(fp: Flashpods, args: argparse.Namespace) -> int:
    raw = args.dest or f"{ARTIFACTS_DIR_NAME}/{args.job_id}"
    dest = confine(raw, what="dest", base=Path.cwd(), roots=None, settings=fp.settings)
    with progress_bar(f"artifacts {args.job_id}") as update:
        result = fp.fetch_artifacts(args.job_id, dest, update)
    for f in result.written:
        out.print(f"{f.size:>12,}  {dest / f.path}", highlight=False)
    for s in result.skipped:
        err.print(f"skipped {s.path}: {s.reason}", highlight=False)
    if result.skipped_more:
        err.print(f"skipped {result.skipped_more:,} more (same causes as above, or too many)")
    dropped = sum(f.exec_bit_dropped for f in result.written)
    if dropped:
        err.print(
            f"{dropped} files had an exec bit in the job, which is never kept: "
            "chmod +x what you mean to run"
        )
    err.print(f"{len(result.written)} files, {result.total_bytes:,} bytes in {dest}")
    return 0


def cmd_kill(fp: Flashpods, args: argparse.Namespace) -> int:
    out.print(JobInfo.from_api(fp.api.kill_job(args.job_id)).line(), highlight=False)
    return 0


def _parse_env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise FlashpodsError(f"--env takes NAME=VALUE, got {pair!r}.")
        env[key] = value
    return env


def exit_status(job: JobInfo) -> int:
    # A host timeout exits 124 like timeout(1), whatever signal ended the container.
    if job.status == "timed_out":
        return EXIT_TIMED_OUT
    if job.exit_code is not None:
        return job.exit_code
    return EXIT_KILLED if job.status == "killed" else 1


def cmd_run(fp: Flashpods, args: argparse.Namespace) -> int:
    words = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not words:
        raise FlashpodsError(
            "Nothing to run: give the command after --, e.g. flashpods run -- make test."
        )
    # One word is a shell string ("make && ./test"); several are an exact argv.
    command = words[0] if len(words) == 1 else shlex.join(words)
    source = None
    if not args.no_upload:
        source = confine(args.path, what="path", base=Path.cwd(), roots=None, settings=fp.settings)
    with progress_bar(f"upload {source.name if source else ''}") as update:
        job, upload = fp.spawn(
            "worker",
            command=command,
            source=source,
            exclude=args.exclude,
            include_git=args.include_git,
            image=args.image,
            env=_parse_env(args.env),
            timeout_s=args.timeout,
            cpus=args.cpus,
            memory=args.memory,
            progress=update,
        )
    info = JobInfo.from_api(job)
    if upload:
        err.print(
            f"uploaded {upload.files} entries ({upload.total_bytes:,} bytes, "
            f"{upload.bytes_sent:,} sent)",
            highlight=False,
        )
    err.print(f"started {info.id}", highlight=False)
    try:
        fp.follow(info.id, _write_raw)
        while info.status not in FINAL_STATES:
            info = JobInfo.from_api(fp.api.get_job(info.id))
            if info.status not in FINAL_STATES:
                time.sleep(0.5)
    except KeyboardInterrupt:
        err.print(f"\n{info.id} keeps running on the host; stop it with: flashpods kill {info.id}")
        return 130
    err.print(info.line(), highlight=False)
    return exit_status(info)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flashpods", description="Run jobs on a Flashpods host.")
    sub = parser.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("jobs", help="list jobs, newest first")
    p.add_argument("--status", help="only jobs in this state")
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("status", help="one job's record")
    p.add_argument("job_id")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("logs", help="a job's output")
    p.add_argument("job_id")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing until it ends")
    p.add_argument("--tail", type=int, help="only the last N lines")
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("artifacts", help="download and unpack a job's /artifacts")
    p.add_argument("job_id")
    p.add_argument("dest", nargs="?", help=f"default ./{ARTIFACTS_DIR_NAME}/<job_id>")
    p.set_defaults(func=cmd_artifacts)

    p = sub.add_parser("kill", help="stop a job")
    p.add_argument("job_id")
    p.set_defaults(func=cmd_kill)

    p = sub.add_parser("run", help="upload a directory, run a command, follow it")
    p.add_argument("--path", default=".", help="directory to upload (default: current)")
    p.add_argument("--no-upload", action="store_true", help="run without uploading files")
    p.add_argument("--exclude", action="append", default=[], help="rsync exclude pattern")
    p.add_argument("--include-git", action="store_true", help="also upload .git")
    p.add_argument("--image")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--timeout", type=int, metavar="SECONDS")
    p.add_argument("--cpus", type=float)
    p.add_argument("--memory", type=int, metavar="MIB")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command")
    p.set_defaults(func=cmd_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(Flashpods(load_settings()), args)
    except FlashpodsError as exc:
        err.print(f"flashpods: {exc}", highlight=False, markup=False)
        return 1


if __name__ == "__main__":
    sys.exit(main())
