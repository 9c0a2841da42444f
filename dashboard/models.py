"""The read model: SQL tables the projector fills from the events (SQLAlchemy 2, typed ORM).

One row per fact, keyed by the event id where the fact is an event, so projecting an event
twice cannot add a row twice. Listing filters have their own indexes; URLs are long and
unbounded, so they are indexed through a sha256 digest instead of the text itself.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    Index,
    Integer,
    String,
    Table,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

ID = String(200)
HASH = String(64)


class Base(DeclarativeBase):
    pass


class Execution(Base):
    """One execution as its events describe it; ``seq`` (first seen) orders the listing."""

    __tablename__ = "executions"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    execution_id: Mapped[str] = mapped_column(ID, unique=True)
    project_id: Mapped[str | None] = mapped_column(ID)
    status: Mapped[str] = mapped_column(String(32))
    status_time: Mapped[datetime | None] = mapped_column(DateTime)
    status_rank: Mapped[int] = mapped_column(Integer, default=-1)
    # Running sums of the per-file events, and the totals of the latest summary event
    # (inputs.ready / outputs.stored), which win once known: events may arrive in any order.
    inputs_files: Mapped[int] = mapped_column(Integer, default=0)
    inputs_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    inputs_total_files: Mapped[int | None] = mapped_column(Integer)
    inputs_total_bytes: Mapped[int | None] = mapped_column(BigInteger)
    inputs_total_time: Mapped[datetime | None] = mapped_column(DateTime)
    outputs_files: Mapped[int] = mapped_column(Integer, default=0)
    outputs_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    outputs_total_files: Mapped[int | None] = mapped_column(Integer)
    outputs_total_bytes: Mapped[int | None] = mapped_column(BigInteger)
    outputs_total_time: Mapped[datetime | None] = mapped_column(DateTime)
    has_warning: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)

    __table_args__ = (
        Index("ix_executions_project_seq", "project_id", "seq"),
        Index("ix_executions_status_seq", "status", "seq"),
        Index("ix_executions_warning_seq", "has_warning", "seq"),
        # Project and status together (measured: 31 ms at 30 000 executions on PostgreSQL
        # without it, a bitmap scan of the project plus a sort).
        Index("ix_executions_project_status_seq", "project_id", "status", "seq"),
        Index("ix_executions_project_warning_seq", "project_id", "has_warning", "seq"),
    )


class Project(Base):
    """Every project seen, for the listing's filter (a DISTINCT over executions is a scan)."""

    __tablename__ = "projects"
    project_id: Mapped[str] = mapped_column(ID, primary_key=True)


class EventRow(Base):
    """Every projected event: the de-duplication key and the execution's timeline."""

    __tablename__ = "events"
    id: Mapped[str] = mapped_column(ID, primary_key=True)
    stream_id: Mapped[str] = mapped_column(String(64))
    #: the stream id zero-padded, so that text order is stream order ("…-10" after "…-9")
    stream_pos: Mapped[str] = mapped_column(String(64))
    type: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str | None] = mapped_column(ID)
    time: Mapped[datetime] = mapped_column(DateTime, index=True)

    __table_args__ = (Index("ix_events_subject_time", "subject", "time"),)


class InputFile(Base):
    __tablename__ = "input_files"
    event_id: Mapped[str] = mapped_column(ID, primary_key=True)
    execution_id: Mapped[str] = mapped_column(ID, index=True)
    project_id: Mapped[str] = mapped_column(ID)
    input: Mapped[str] = mapped_column(String(200))
    url: Mapped[str] = mapped_column(Text)
    url_digest: Mapped[str] = mapped_column(HASH)
    path: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(BigInteger)
    md5: Mapped[str] = mapped_column(HASH)
    sha1: Mapped[str] = mapped_column(HASH)
    sha256: Mapped[str] = mapped_column(HASH, index=True)
    cached: Mapped[bool] = mapped_column(Boolean)
    seconds: Mapped[float] = mapped_column(Float)
    etag: Mapped[str | None] = mapped_column(Text)
    version: Mapped[str | None] = mapped_column(Text)
    last_modified: Mapped[str | None] = mapped_column(Text)
    checksum: Mapped[str | None] = mapped_column(Text)
    time: Mapped[datetime] = mapped_column(DateTime)

    __table_args__ = (Index("ix_input_files_project_url", "project_id", "url_digest", "time"),)


class InputChange(Base):
    __tablename__ = "input_changes"
    event_id: Mapped[str] = mapped_column(ID, primary_key=True)
    execution_id: Mapped[str] = mapped_column(ID, index=True)
    project_id: Mapped[str] = mapped_column(ID)
    input: Mapped[str] = mapped_column(String(200))
    url: Mapped[str] = mapped_column(Text)
    url_digest: Mapped[str] = mapped_column(HASH)
    message: Mapped[str] = mapped_column(Text)
    previous: Mapped[dict[str, Any]] = mapped_column(JSON)
    current: Mapped[dict[str, Any]] = mapped_column(JSON)
    time: Mapped[datetime] = mapped_column(DateTime)

    __table_args__ = (Index("ix_input_changes_project_url", "project_id", "url_digest"),)


class InputSkipped(Base):
    __tablename__ = "input_skipped"
    event_id: Mapped[str] = mapped_column(ID, primary_key=True)
    execution_id: Mapped[str] = mapped_column(ID, index=True)
    input: Mapped[str] = mapped_column(String(200))
    url: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    time: Mapped[datetime] = mapped_column(DateTime)


class Failure(Base):
    __tablename__ = "failures"
    event_id: Mapped[str] = mapped_column(ID, primary_key=True)
    execution_id: Mapped[str] = mapped_column(ID, index=True)
    stage: Mapped[str] = mapped_column(String(16))  # inputs | outputs
    input: Mapped[str | None] = mapped_column(String(200))
    url: Mapped[str | None] = mapped_column(Text)
    code: Mapped[str] = mapped_column(String(200))
    message: Mapped[str] = mapped_column(Text)
    time: Mapped[datetime] = mapped_column(DateTime)


class Refused(Base):
    __tablename__ = "refused"
    event_id: Mapped[str] = mapped_column(ID, primary_key=True)
    execution_id: Mapped[str] = mapped_column(ID, index=True)
    path: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    time: Mapped[datetime] = mapped_column(DateTime)


class DatumRow(Base):
    """A datum; nullable columns because a purge may be projected before the datum itself."""

    __tablename__ = "datums"
    datum_id: Mapped[str] = mapped_column(ID, primary_key=True)
    project_id: Mapped[str] = mapped_column(ID)
    execution_id: Mapped[str | None] = mapped_column(ID, index=True)
    path: Mapped[str | None] = mapped_column(Text)
    uri: Mapped[str | None] = mapped_column(Text)
    key: Mapped[str | None] = mapped_column(Text)
    size: Mapped[int | None] = mapped_column(BigInteger)
    md5: Mapped[str | None] = mapped_column(HASH)
    sha1: Mapped[str | None] = mapped_column(HASH)
    sha256: Mapped[str | None] = mapped_column(HASH, index=True)
    deduplicated: Mapped[bool | None] = mapped_column(Boolean)
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    alias: Mapped[str | None] = mapped_column(String(200))
    dataset_versions: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime | None] = mapped_column(DateTime)
    purged: Mapped[bool] = mapped_column(Boolean, default=False)
    content_removed: Mapped[bool | None] = mapped_column(Boolean)
    purged_at: Mapped[datetime | None] = mapped_column(DateTime)


class AliasMove(Base):
    __tablename__ = "alias_moves"
    event_id: Mapped[str] = mapped_column(ID, primary_key=True)
    project_id: Mapped[str] = mapped_column(ID)
    alias: Mapped[str] = mapped_column(String(200))
    datum_id: Mapped[str] = mapped_column(ID, index=True)
    previous_datum_id: Mapped[str | None] = mapped_column(ID, index=True)
    execution_id: Mapped[str] = mapped_column(ID)
    time: Mapped[datetime] = mapped_column(DateTime)

    __table_args__ = (Index("ix_alias_moves_alias", "project_id", "alias", "time"),)


class DatasetMember(Base):
    """One datum of one dataset version (``haul.dataset.version.created``)."""

    __tablename__ = "dataset_members"
    event_id: Mapped[str] = mapped_column(ID, primary_key=True)
    datum_id: Mapped[str] = mapped_column(ID, primary_key=True, index=True)
    project_id: Mapped[str] = mapped_column(ID)
    dataset: Mapped[str] = mapped_column(String(200))
    version: Mapped[str] = mapped_column(String(200))
    files: Mapped[int] = mapped_column(Integer)
    bytes: Mapped[int] = mapped_column(BigInteger)
    time: Mapped[datetime] = mapped_column(DateTime)


class Progress(Base):
    """The latest ``haul.transfer.progress`` of each file in flight (not de-duplicated:
    every report of one execution shares one event id, only the newest one matters)."""

    __tablename__ = "progress"
    execution_id: Mapped[str] = mapped_column(ID, primary_key=True)
    path: Mapped[str] = mapped_column(String(1000), primary_key=True)
    bytes_done: Mapped[int] = mapped_column(BigInteger)
    bytes_total: Mapped[int | None] = mapped_column(BigInteger)
    rate_bytes_s: Mapped[float] = mapped_column(Float)
    eta_s: Mapped[float | None] = mapped_column(Float)
    time: Mapped[datetime] = mapped_column(DateTime)


class StreamGap(Base):
    """History the stream lost before this consumer group read it."""

    __tablename__ = "stream_gaps"
    before: Mapped[datetime] = mapped_column(DateTime, primary_key=True)
    lost_events: Mapped[int] = mapped_column(BigInteger)
    detected_at: Mapped[datetime] = mapped_column(DateTime)


class BadEvent(Base):
    """A stream entry that is not a usable event: kept with why, never silently dropped."""

    __tablename__ = "bad_events"
    stream_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    problem: Mapped[str] = mapped_column(Text)
    payload: Mapped[str] = mapped_column(Text)
    detected_at: Mapped[datetime] = mapped_column(DateTime)


def table_of(model: type[Base]) -> Table:
    """The Core table of a mapped class (typed as a Table, which it is)."""
    return cast(Table, model.__table__)
