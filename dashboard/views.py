"""What the dashboard shows, as typed records: the API's response models and the pages' data.

Pages and API render the same objects (built by ``dashboard.queries``), so a page cannot show
a fact the API lacks or the other way round. Times are RFC 3339 UTC strings.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

Status = Literal[
    "preparing", "inputs_ready", "inputs_failed", "storing", "outputs_stored", "outputs_failed"
]


class Counts(BaseModel):
    files: int
    bytes: int


class InputWarning(BaseModel):
    input: str
    url: str
    message: str


class ErrorInfo(BaseModel):
    code: str
    message: str


class ExecutionItem(BaseModel):
    execution_id: str
    project_id: str | None
    status: Status
    inputs: Counts
    outputs: Counts
    warnings: list[InputWarning]
    error: ErrorInfo | None
    created_at: str
    updated_at: str


class ExecutionPage(BaseModel):
    items: list[ExecutionItem]
    next: str | None = Field(description="cursor of the next (older) page, null on the last")
    incomplete_before: str | None = Field(
        default=None, description="history before this time is incomplete (stream trimmed)"
    )


class Source(BaseModel):
    etag: str | None
    version: str | None
    last_modified: str | None
    checksum: str | None


class InputRead(BaseModel):
    input: str
    url: str
    path: str
    size: int
    md5: str
    sha1: str
    sha256: str
    cached: bool
    seconds: float
    source: Source
    time: str


class Seen(BaseModel):
    md5: str
    sha1: str
    sha256: str
    size: int
    execution_id: str
    seen_at: str


class Change(BaseModel):
    input: str
    url: str
    message: str
    previous: Seen
    current: Seen
    time: str


class Skipped(BaseModel):
    input: str
    url: str
    reason: str
    time: str


class Failure(BaseModel):
    stage: Literal["inputs", "outputs"]
    input: str | None
    url: str | None
    code: str
    message: str
    time: str


class Output(BaseModel):
    datum_id: str
    path: str | None
    uri: str | None
    key: str | None
    size: int | None
    md5: str | None
    sha1: str | None
    sha256: str | None
    deduplicated: bool | None
    tags: list[str]
    alias: str | None
    dataset_versions: list[str]
    purged: bool


class RefusedOutput(BaseModel):
    path: str
    reason: str
    time: str


class EventRef(BaseModel):
    id: str
    type: str
    time: str


class TransferProgress(BaseModel):
    path: str
    bytes_done: int
    bytes_total: int | None
    rate_bytes_s: float
    eta_s: float | None
    time: str


class ExecutionDetails(BaseModel):
    """The listing's facts, with ``inputs`` and ``outputs`` as the lists of files (the
    contract names both; the listing's counts are ``inputs_count`` / ``outputs_count`` here)."""

    execution_id: str
    project_id: str | None
    status: Status
    inputs_count: Counts
    outputs_count: Counts
    warnings: list[InputWarning]
    error: ErrorInfo | None
    created_at: str
    updated_at: str
    inputs: list[InputRead]
    changes: list[Change]
    skipped: list[Skipped]
    failures: list[Failure]
    outputs: list[Output]
    refused: list[RefusedOutput]
    events: list[EventRef]
    progress: list[TransferProgress]
    incomplete_before: str | None = None


class AliasMoveOut(BaseModel):
    alias: str
    datum_id: str
    previous_datum_id: str | None
    execution_id: str
    time: str
    current: bool = Field(description="the alias still points here")


class DatasetVersionRef(BaseModel):
    dataset: str
    version: str
    uri: str
    files: int
    bytes: int


class Use(BaseModel):
    execution_id: str
    input: str
    url: str
    matched_by: Literal["uri", "sha256"]
    time: str


class DatumDetails(Output):
    project_id: str
    execution_id: str | None
    created_at: str | None
    content_removed: bool | None
    purged_at: str | None
    alias_moves: list[AliasMoveOut]
    dataset_memberships: list[DatasetVersionRef]
    producer: ExecutionItem | None
    producer_inputs: list[InputRead]
    used_by: list[Use]
    incomplete_before: str | None = None


class UrlRead(BaseModel):
    execution_id: str
    input: str
    path: str
    time: str
    size: int
    md5: str
    sha1: str
    sha256: str
    cached: bool
    changed: bool = Field(description="the content differs from the read before it")
    change_message: str | None


class UrlHistory(BaseModel):
    project_id: str
    url: str
    reads: list[UrlRead]
    change_points: int
    incomplete_before: str | None = None


class Health(BaseModel):
    status: Literal["ok", "incomplete", "redis_unavailable"]
    lag_events: int | None = Field(description="events in the stream not yet projected")
    last_event_time: str | None
    incomplete_before: str | None = None
    redis: bool


class ErrorBody(BaseModel):
    error: str
    detail: str
