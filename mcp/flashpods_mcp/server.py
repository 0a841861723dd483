"""The MCP server: tool declarations only; the work is in operations.py.

Settings are loaded on every call, so a dev host restarted with a new token or port
(it rewrites ~/.config/flashpods/dev-host.env) is picked up without restarting the
server, and a missing configuration is a tool error, not a server that fails to start.
"""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import anyio.to_thread
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel, Field

from .config import load_settings
from .confine import confine, enclosing_root
from .context import base_dir, client_roots, progress_bridge
from .errors import FlashpodsError
from .models import (
    ArtifactFile,
    ArtifactsResult,
    JobInfo,
    JobList,
    OutputResult,
    SkippedArtifact,
    SpawnResult,
    UploadInfo,
)
from .operations import Flashpods
from .sdk import Context, new_server
from .transfer import ARTIFACTS_DIR_NAME

T = TypeVar("T")

# FastMCP's own settings model trips a pydantic-settings warning about its `lifespan`
# field on construction (SDK 1.27.1 noise, nothing of ours): keep it out of stderr.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    mcp = new_server(
        "flashpods",
        instructions=(
            "Runs jobs on a Flashpods host: spawn_worker runs a shell command on a copy of a "
            "local directory inside a container, spawn_sub_agent runs a coding agent there. "
            "Follow a job with get_job_output (wait_s long-polls), fetch its /artifacts with "
            "get_job_artifacts, stop it with kill_job."
        ),
    )

JobId = Annotated[
    str, Field(description="Job id as returned by spawn_worker, e.g. job_0123456789ab")
]
PathArg = Annotated[
    str | None,
    Field(
        description=(
            "Local directory to upload as the job's /workspace. Must be inside the client's "
            "roots (or FLASHPODS_ALLOWED_PATHS). Default: the client's first root."
        )
    ),
]
ExcludeArg = Annotated[
    list[str] | None,
    Field(
        description=(
            "Extra rsync exclude patterns (e.g. 'node_modules/', '*.log'). .gitignore "
            "patterns and .git are excluded already."
        )
    ),
]
IncludeGitArg = Annotated[bool, Field(description="Also upload the .git directory")]
EnvArg = Annotated[
    dict[str, str] | None,
    Field(description="Non-secret environment variables for the job (secrets come from the host)"),
]
TimeoutArg = Annotated[
    int | None,
    Field(ge=1, description="Seconds before the host stops the job (default 1 h)"),
]
BudgetArg = Annotated[
    int | None,
    Field(
        ge=1,
        description=(
            "Model token budget (input + output) for this job, lower than the host's "
            "default; at it the model endpoint refuses and the job is stopped "
            "(budget_exhausted). Only on hosts that meter model calls."
        ),
    ),
]
CpusArg = Annotated[float | None, Field(gt=0, description="CPU limit, e.g. 1.5")]
MemoryArg = Annotated[int | None, Field(ge=16, description="Memory limit in MiB")]
ImageArg = Annotated[
    str | None,
    Field(description="Container image from the host's allow-list (default: host's)"),
]


def result(model: BaseModel, text: str) -> CallToolResult:
    """Structured content for programs, a short sentence for the model's context."""
    return CallToolResult(
        content=[TextContent(type="text", text=text)],
        structuredContent=model.model_dump(mode="json"),
    )


def ops() -> Flashpods:
    return Flashpods(load_settings())


async def run(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Blocking HTTP and rsync in a worker thread: the event loop stays free."""
    return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))


async def resolve_source(ctx: Context, flashpods: Flashpods, path: str | None) -> Path:
    roots = await client_roots(ctx)
    if path is None:
        if not roots:
            raise FlashpodsError(
                "path is required: this MCP client offers no roots to default to; give "
                "the local directory to upload."
            )
        path = str(roots[0])
    return confine(
        path,
        what="path",
        base=base_dir(roots),
        roots=roots,
        settings=flashpods.settings,
    )


async def _spawn(ctx: Context, kind: str, path: str | None, **request: Any) -> CallToolResult:
    flashpods = ops()
    source = await resolve_source(ctx, flashpods, path)
    job, upload = await run(
        flashpods.spawn, kind, source=source, progress=progress_bridge(ctx), **request
    )
    info = JobInfo.from_api(job)
    upload_info = UploadInfo(**vars(upload)) if upload else None
    text = f"Started {info.line()}."
    if upload:
        text += (
            f" Uploaded {upload.files} entries from {upload.source} "
            f"({upload.total_bytes:,} bytes, {upload.bytes_sent:,} sent)."
        )
    return result(SpawnResult(job=info, upload=upload_info), text)


@mcp.tool(
    annotations=ToolAnnotations(
        title="Run a shell command on the Flashpods host",
        readOnlyHint=False,
        destructiveHint=False,
        idempotentHint=False,
        openWorldHint=True,
    )
)
async def spawn_worker(
    command: Annotated[
        str, Field(description="Shell command, run as `sh -c COMMAND` in /workspace")
    ],
    ctx: Context,
    path: PathArg = None,
    exclude: ExcludeArg = None,
    include_git: IncludeGitArg = False,
    image: ImageArg = None,
    env: EnvArg = None,
    timeout_s: TimeoutArg = None,
    cpus: CpusArg = None,
    memory: MemoryArg = None,
    budget_tokens: BudgetArg = None,
) -> Annotated[CallToolResult, SpawnResult]:
    """Upload a local directory and run a shell command on it in a container on the host.

    Returns at once with the job id; follow it with get_job_output and get_job_status,
    and fetch what it wrote to /artifacts with get_job_artifacts.
    """
    return await _spawn(
        ctx,
        "worker",
        path,
        command=command,
        exclude=exclude or (),
        include_git=include_git,
        image=image,
        env=env,
        timeout_s=timeout_s,
        cpus=cpus,
        memory=memory,
        budget_tokens=budget_tokens,
    )


@mcp.tool(
    annotations=ToolAnnotations(
        title="Start a coding sub-agent on the Flashpods host",
        readOnlyHint=False,
        destructiveHint=False,
        idempotentHint=False,
        openWorldHint=True,
    )
)
async def spawn_sub_agent(
    prompt: Annotated[str, Field(description="What the sub-agent should do in /workspace")],
    ctx: Context,
    path: PathArg = None,
    exclude: ExcludeArg = None,
    include_git: IncludeGitArg = False,
    image: ImageArg = None,
    env: EnvArg = None,
    timeout_s: TimeoutArg = None,
    cpus: CpusArg = None,
    memory: MemoryArg = None,
    budget_tokens: BudgetArg = None,
) -> Annotated[CallToolResult, SpawnResult]:
    """Upload a local directory and start an AI coding agent on it with a prompt.

    The agent works on its own copy; its changes (a diff and the changed files) come
    back with get_job_artifacts once the job has ended.
    """
    return await _spawn(
        ctx,
        "sub_agent",
        path,
        prompt=prompt,
        exclude=exclude or (),
        include_git=include_git,
        image=image,
        env=env,
        timeout_s=timeout_s,
        cpus=cpus,
        memory=memory,
        budget_tokens=budget_tokens,
    )


@mcp.tool(annotations=ToolAnnotations(readOnlyHint=True, idempotentHint=True, openWorldHint=True))
async def get_job_status(job_id: JobId) -> Annotated[CallToolResult, JobInfo]:
    """Status, exit code, times, queue position and error of a job."""
    info = JobInfo.from_api(await run(ops().api.get_job, job_id))
    return result(info, info.line())


@mcp.tool(annotations=ToolAnnotations(readOnlyHint=True, idempotentHint=True, openWorldHint=True))
async def get_job_output(
    job_id: JobId,
    offset: Annotated[
        int | None,
        Field(ge=0, description="Byte offset to read from (next_offset of the last call)"),
    ] = None,
    tail_lines: Annotated[
        int | None,
        Field(ge=1, le=10000, description="Instead of offset: the last N lines"),
    ] = None,
    wait_s: Annotated[
        float,
        Field(
            ge=0,
            le=300,
            description="Wait up to this long for new output or the job's end",
        ),
    ] = 0,
    max_bytes: Annotated[
        int, Field(ge=1024, le=1048576, description="At most this many bytes per call")
    ] = 65536,
) -> Annotated[CallToolResult, OutputResult]:
    """Read a job's combined stdout+stderr from a byte offset (or its last lines).

    Call again with offset=next_offset until final is true; wait_s long-polls so you
    do not need to sleep between calls.
    """
    # A long-poll only reads: when the client cancels, answer at once and let the
    # thread finish its last poll on its own.
    out = await anyio.to_thread.run_sync(
        functools.partial(ops().read_output, job_id, offset, tail_lines, wait_s, max_bytes),
        abandon_on_cancel=True,
    )
    model = OutputResult(**vars(out))
    trailer = f"[next_offset={out.next_offset} final={str(out.final).lower()}]"
    text = out.text if not out.text or out.text.endswith("\n") else out.text + "\n"
    return result(model, text + trailer)


@mcp.tool(
    annotations=ToolAnnotations(
        readOnlyHint=False,
        destructiveHint=True,
        idempotentHint=True,
        openWorldHint=True,
    )
)
async def get_job_artifacts(
    job_id: JobId,
    ctx: Context,
    dest: Annotated[
        str | None,
        Field(
            description=(
                "Local directory to unpack into (inside the client's roots); files of the "
                f"same name there are replaced. Default: ./{ARTIFACTS_DIR_NAME}/<job_id>"
            )
        ),
    ] = None,
) -> Annotated[CallToolResult, ArtifactsResult]:
    """Download what a job wrote to /artifacts and unpack it into a local directory.

    Links, devices, unsafe paths, git metadata and files tools run by themselves (.git,
    .vscode/, .envrc, ...) are never unpacked, and no file keeps an exec bit; the result
    lists what was skipped and why.
    """
    flashpods = ops()
    roots = await client_roots(ctx)
    raw = dest if dest is not None else f"{ARTIFACTS_DIR_NAME}/{job_id}"
    target = confine(
        raw, what="dest", base=base_dir(roots), roots=roots, settings=flashpods.settings
    )
    within = enclosing_root(target, roots, flashpods.settings)
    unpacked = await run(flashpods.fetch_artifacts, job_id, target, progress_bridge(ctx), within)
    model = ArtifactsResult(
        job_id=job_id,
        dest=str(target),
        files=[
            ArtifactFile(path=f.path, size=f.size, exec_bit_dropped=f.exec_bit_dropped)
            for f in unpacked.written
        ],
        total_bytes=unpacked.total_bytes,
        skipped=[SkippedArtifact(path=s.path, reason=s.reason) for s in unpacked.skipped],
        skipped_more=unpacked.skipped_more,
    )
    listed = ", ".join(f"{f.path} ({f.size:,} B)" for f in unpacked.written[:20])
    more = f" and {len(unpacked.written) - 20} more" if len(unpacked.written) > 20 else ""
    text = f"Wrote {len(unpacked.written)} files ({unpacked.total_bytes:,} bytes) to {target}"
    text += f": {listed}{more}." if listed else "."
    if unpacked.skipped:
        text += " Skipped: " + "; ".join(f"{s.path}: {s.reason}" for s in unpacked.skipped[:10])
        hidden = len(unpacked.skipped) - 10 + unpacked.skipped_more
        text += f"; and {hidden} more (see skipped)." if hidden > 0 else "."
    dropped = sum(f.exec_bit_dropped for f in unpacked.written)
    if dropped:
        text += f" {dropped} files lost the exec bit the job gave them (never kept)."
    return result(model, text)


@mcp.tool(
    annotations=ToolAnnotations(
        readOnlyHint=False,
        destructiveHint=True,
        idempotentHint=True,
        openWorldHint=True,
    )
)
async def kill_job(job_id: JobId) -> Annotated[CallToolResult, JobInfo]:
    """Stop a running job (grace period, then SIGKILL) or drop a queued one."""
    info = JobInfo.from_api(await run(ops().api.kill_job, job_id))
    return result(info, info.line())


@mcp.tool(annotations=ToolAnnotations(readOnlyHint=True, idempotentHint=True, openWorldHint=True))
async def list_jobs(
    status: Annotated[
        Literal[
            "queued",
            "starting",
            "running",
            "succeeded",
            "failed",
            "timed_out",
            "killed",
            "lost",
        ]
        | None,
        Field(description="Only jobs in this state"),
    ] = None,
    limit: Annotated[int, Field(ge=1, le=500, description="At most this many, newest first")] = 50,
) -> Annotated[CallToolResult, JobList]:
    """The host's jobs, newest first, one line each."""
    jobs = [JobInfo.from_api(j) for j in await run(ops().api.list_jobs, status, limit)]
    text = "\n".join(j.line() for j in jobs) or "No jobs."
    return result(JobList(jobs=jobs), text)


def main() -> None:
    # stdout is the MCP channel: logs go to stderr only.
    logging.basicConfig(level=logging.WARNING, format="flashpods-mcp: %(message)s")
    mcp.run("stdio")


if __name__ == "__main__":
    main()
