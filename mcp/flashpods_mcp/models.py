"""Structured tool results (their JSON schemas are the tools' output schemas)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

Time = str | int | float | None


class ModelUsage(BaseModel):
    """Model calls the host's credential proxy metered for the job (docs/token.md)."""

    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    budget_tokens: int | None = Field(None, description="The job's cap of input + output tokens")
    budget_exhausted: bool = Field(False, description="The job used its whole model budget")


class JobInfo(BaseModel):
    id: str
    kind: str | None = None
    status: str
    exit_code: int | None = None
    error: str | None = Field(None, description="Why Flashpods itself failed the job")
    created_at: Time = None
    started_at: Time = None
    finished_at: Time = None
    queue_position: int | None = None
    image: str | None = None
    timeout_s: int | None = None
    budget_tokens: int | None = Field(None, description="The job's own model token budget")
    stop_reason: str | None = Field(
        None, description="Why Flashpods stopped the job (kill, timeout, budget_exhausted, ...)"
    )
    usage: ModelUsage | None = None

    @classmethod
    def from_api(cls, job: dict[str, Any]) -> JobInfo:
        return cls.model_validate({k: job.get(k) for k in cls.model_fields if k in job})

    def line(self) -> str:
        """One human line: id, kind, status, exit code, and the error if any."""
        parts = [self.id, self.kind or "?", self.status]
        if self.exit_code is not None:
            parts.append(f"exit {self.exit_code}")
        if self.queue_position is not None:
            parts.append(f"queue position {self.queue_position}")
        u = self.usage
        if u is not None and u.requests:
            parts.append(f"model {u.requests} calls, {u.input_tokens} in / {u.output_tokens} out")
        budget = (u.budget_tokens if u is not None else None) or self.budget_tokens
        if budget is not None:
            parts.append(f"budget {budget} tokens")
        if self.stop_reason == "budget_exhausted" or (u is not None and u.budget_exhausted):
            parts.append("budget_exhausted")
        if self.error:
            parts.append(f"error: {self.error}")
        return " ".join(parts)


class UploadInfo(BaseModel):
    upload_id: str
    source: str
    files: int
    total_bytes: int
    bytes_sent: int = Field(description="Bytes rsync actually sent (small when the basis matched)")
    linked_from_basis: bool


class SpawnResult(BaseModel):
    job: JobInfo
    upload: UploadInfo | None = None


class OutputResult(BaseModel):
    job_id: str
    text: str
    offset: int
    next_offset: int = Field(description="Pass as offset to read on from here")
    final: bool = Field(description="True when the job has ended and no output is left")


class ArtifactFile(BaseModel):
    path: str
    size: int
    exec_bit_dropped: bool = Field(
        default=False,
        description="The job's file was executable; it is written without exec bits",
    )


class SkippedArtifact(BaseModel):
    path: str
    reason: str


class ArtifactsResult(BaseModel):
    job_id: str
    dest: str
    files: list[ArtifactFile]
    total_bytes: int
    skipped: list[SkippedArtifact] = []
    skipped_more: int = Field(
        default=0,
        description="Skipped members not listed (same cause as a listed one, or over the cap)",
    )


class JobList(BaseModel):
    jobs: list[JobInfo]
