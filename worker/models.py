"""The message and event-data models of the contract (sections 2 and 6).

The same models validate what orchestrators send, build what haul publishes, and generate the
JSON Schemas kept under ``schemas/`` (``python -m worker.schemas``).
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, field_validator

from worker.errors import MessageError, UnsupportedURL, bounded
from worker.paths import hidden_characters
from worker.urls import parse_input_url, redact_url

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
NAME_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
Id = Annotated[str, Field(pattern=ID_PATTERN)]
InputName = Annotated[str, Field(pattern=NAME_PATTERN)]
KeepDirectories = Literal["none", "full", "suffix"]
#: longer URLs are refused: S3 keys stop at 1024 bytes and web servers at about 8 KiB of
#: request line, while presigned URLs with session tokens stay under 4 KiB
MAX_URL_CHARS = 8192
#: datum ids one purge may name (its outcome event lists each one)
MAX_PURGE_IDS = 10_000
URL_SCHEMES = (
    "s3://",
    "azure://",
    "gs://",
    "swift://",
    "http://",
    "https://",
    "datum://",
    "dataset://",
    "file://",
)


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)


class InputSpec(_Message):
    name: InputName
    urls: Annotated[list[str], Field(min_length=1, max_length=10_000)]
    filename: str | None = None
    keep_directories: KeepDirectories = "none"
    #: strict: JSON true/false only (pydantic would take "yes", "off", 1 or 0 as a boolean)
    optional: StrictBool = False

    @field_validator("name")
    @classmethod
    def _not_dots(cls, value: str) -> str:
        if value in {".", ".."}:
            raise ValueError("an input name cannot be '.' or '..'")
        return value

    @field_validator("urls")
    @classmethod
    def _known_schemes(cls, urls: list[str]) -> list[str]:
        for url in urls:
            if len(url) > MAX_URL_CHARS:
                raise ValueError(
                    f"a URL may have at most {MAX_URL_CHARS} characters, this one has {len(url)}"
                )
            if not url.startswith(URL_SCHEMES):
                raise ValueError(
                    "unsupported URL form; use s3://, azure://, gs://, swift://, http(s)://, "
                    "datum://, dataset:// or file:// (inside a declared local store)"
                )
            if any(ch in url for ch in "\x00\r\n"):
                raise ValueError("URLs cannot contain NUL or line breaks")
            try:
                parsed = parse_input_url(url)
                if parsed.scheme in {"http", "https"}:
                    _ = urlsplit(url).port  # raises for a port out of range
            except (UnsupportedURL, ValueError) as exc:
                raise ValueError(f"malformed URL {redact_url(url)}: {exc}") from None
        return urls

    @field_validator("filename")
    @classmethod
    def _plain_filename(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if (
            not value
            or value in {".", ".."}
            or "/" in value
            or "\\" in value
            or "\x00" in value
            or len(value.encode()) > 255
        ):
            raise ValueError("filename must be one plain file name, without '/' or '..'")
        if hidden_characters(value):
            shown = ", ".join(dict.fromkeys(hidden_characters(value)))
            raise ValueError(f"filename holds control or bidi formatting characters ({shown})")
        return value


class PrepareInputs(_Message):
    execution_id: Id
    project_id: Id
    store: str | None = None
    inputs: Annotated[list[InputSpec], Field(max_length=1000)] = Field(default_factory=list)

    @field_validator("inputs")
    @classmethod
    def _unique_names(cls, inputs: list[InputSpec]) -> list[InputSpec]:
        names = [i.name for i in inputs]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"input names must be unique: {', '.join(dupes)}")
        return inputs


class StoreOutputs(_Message):
    execution_id: Id
    project_id: Id
    store: str | None = None


class WatchOutputs(_Message):
    """``haul.watch_outputs``: store outputs while the execution runs (contract section 9)."""

    execution_id: Id
    project_id: Id
    store: str | None = None


class Purge(_Message):
    project_id: Id
    datum_ids: Annotated[
        list[Annotated[str, Field(pattern=ID_PATTERN)]],
        Field(min_length=1, max_length=MAX_PURGE_IDS),
    ]


M = TypeVar("M", bound=_Message)

MESSAGES: dict[str, type[_Message]] = {
    "haul.prepare_inputs": PrepareInputs,
    "haul.store_outputs": StoreOutputs,
    "haul.purge": Purge,
    "haul.watch_outputs": WatchOutputs,
}


def validate_message(model: type[M], payload: Any) -> M:
    """Validate a task argument; raise :class:`MessageError` with ``[{field, problem}]``."""
    if not isinstance(payload, dict):
        raise MessageError(
            "the message must be one JSON object",
            [{"field": "", "problem": f"expected a JSON object, got {type(payload).__name__}"}],
        )
    try:
        json.dumps(payload, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        # JSON's "\udc80" escapes decode to lone surrogates, which no event, log line or
        # file name can carry.
        problem = "holds text that is not valid Unicode (a lone surrogate such as \\udc80)"
        raise MessageError(f"the message {problem}", [{"field": "", "problem": problem}]) from None
    except (TypeError, ValueError):
        pass  # not JSON-shaped (no worker hands such a payload over): the model says why
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        errors = [
            {"field": ".".join(str(p) for p in err["loc"]), "problem": _problem(err)}
            for err in exc.errors()
        ]
        summary = "; ".join(f"{e['field'] or '(message)'}: {e['problem']}" for e in errors)
        raise MessageError(summary, errors) from None


def _problem(err: Any) -> str:
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "string_pattern_mismatch":
        pattern = err.get("ctx", {}).get("pattern", "")
        return f"does not match {pattern}"
    return bounded(re.sub(r"\s+", " ", msg))


# ---------------------------------------------------------------------------- event data


class _Data(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Hashes(_Data):
    md5: str
    sha1: str
    sha256: str


class SourceInfo(_Data):
    etag: str | None = None
    version: str | None = None
    last_modified: str | None = None
    checksum: str | None = Field(
        default=None,
        description="which server checksum the content was checked against, or why none was",
    )


class InputDownloaded(_Data):
    execution_id: str
    project_id: str
    input: str
    url: str
    path: str
    size: int
    md5: str
    sha1: str
    sha256: str
    cached: bool
    seconds: float
    source: SourceInfo


class SeenContent(_Data):
    md5: str
    sha1: str
    sha256: str
    size: int
    execution_id: str
    seen_at: str


class InputChanged(_Data):
    execution_id: str
    project_id: str
    input: str
    url: str
    message: str
    previous: SeenContent
    current: SeenContent


class InputSkipped(_Data):
    execution_id: str
    input: str
    url: str
    reason: str


class InputsReady(_Data):
    execution_id: str
    project_id: str
    files: int
    bytes: int
    seconds: float


class ErrorInfo(_Data):
    code: str
    message: str


class InputsFailed(_Data):
    execution_id: str
    project_id: str
    input: str | None
    url: str | None
    error: ErrorInfo


class OutputStored(_Data):
    execution_id: str
    project_id: str
    datum_id: str
    path: str
    uri: str
    key: str
    size: int
    md5: str
    sha1: str
    sha256: str
    deduplicated: bool
    tags: list[str] = Field(default_factory=list)
    alias: str | None = None
    #: ``dataset://<dataset>/<version>`` URIs this datum joined (contract section 9)
    dataset_versions: list[str] = Field(default_factory=list)


class OutputRefused(_Data):
    execution_id: str
    path: str
    reason: str


class OutputsStored(_Data):
    execution_id: str
    project_id: str
    files: int
    bytes: int
    seconds: float


class OutputsFailed(_Data):
    execution_id: str
    project_id: str
    error: ErrorInfo


class DatumPurged(_Data):
    project_id: str
    datum_id: str
    key: str | None
    content_removed: bool


class PurgeDone(_Data):
    """The outcome of one purge message: which datums it purged and which it did not know."""

    project_id: str
    purged: list[str] = Field(description="datum ids purged by this message or already purged")
    unknown: list[str] = Field(
        description="datum ids that do not exist or belong to another project; nothing was done"
    )


class FieldProblem(_Data):
    field: str
    problem: str


class MessageRejected(_Data):
    task: str
    reason: str
    errors: list[FieldProblem]


class AliasMoved(_Data):
    project_id: str
    alias: str
    datum_id: str
    previous_datum_id: str | None
    execution_id: str


class DatasetVersionCreated(_Data):
    project_id: str
    dataset: str
    version: str
    datum_ids: list[str]
    files: int
    bytes: int


class TransferProgress(_Data):
    execution_id: str
    input: str | None = None
    path: str
    bytes_done: int
    bytes_total: int | None
    rate_bytes_s: float
    eta_s: float | None


EVENT_DATA: dict[str, type[_Data]] = {
    "haul.input.downloaded": InputDownloaded,
    "haul.input.changed": InputChanged,
    "haul.input.skipped": InputSkipped,
    "haul.inputs.ready": InputsReady,
    "haul.inputs.failed": InputsFailed,
    "haul.output.stored": OutputStored,
    "haul.output.refused": OutputRefused,
    "haul.outputs.stored": OutputsStored,
    "haul.outputs.failed": OutputsFailed,
    "haul.datum.purged": DatumPurged,
    "haul.purge.done": PurgeDone,
    "haul.message.rejected": MessageRejected,
    "haul.transfer.progress": TransferProgress,
    "haul.alias.moved": AliasMoved,
    "haul.dataset.version.created": DatasetVersionCreated,
}


class Datum(_Data):
    """One stored output file version; the record kept in Redis and as JSON in the store."""

    datum_id: str
    project_id: str
    execution_id: str
    path: str
    uri: str
    key: str
    store: str
    size: int
    md5: str
    sha1: str
    sha256: str
    created_at: str
    tags: list[str] = Field(default_factory=list)
    alias: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    purged: bool = False
    purged_at: str | None = None
