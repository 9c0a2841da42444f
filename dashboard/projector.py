"""Events to rows, idempotently: the one writer of the read model.

A batch of events is projected in one transaction. Each event's id is claimed first
(``INSERT ... ON CONFLICT DO NOTHING RETURNING id`` into ``events``): only the ids this
transaction inserted are projected, so an event delivered twice (a redelivered task publishes
the same ids again, or two replicas read two copies) counts once, also when two PostgreSQL
replicas race (the second insert waits for the first to commit, then does nothing).

Execution rows are aggregated per batch and written in execution-id order after a
``SELECT ... FOR UPDATE``, so replicas serialise per execution without lost updates and take
their row locks in one order. An execution's status follows its latest lifecycle event by
event time (ties: the later stage), so events projected out of order give the same row.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, Table, bindparam, func, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.dml import Insert

from dashboard.models import (
    AliasMove,
    BadEvent,
    DatasetMember,
    DatumRow,
    EventRow,
    Execution,
    Failure,
    InputChange,
    InputFile,
    InputSkipped,
    Progress,
    Project,
    Refused,
    StreamGap,
    table_of,
)
from dashboard.parse import BadEntry, Event
from worker import constants as c
from worker import models as m

#: event type -> (status, rank): the lifecycle an execution's status follows
LIFECYCLE: dict[str, tuple[str, int]] = {
    c.EV_INPUT_DOWNLOADED: ("preparing", 0),
    c.EV_INPUT_CHANGED: ("preparing", 0),
    c.EV_INPUT_SKIPPED: ("preparing", 0),
    c.EV_INPUTS_READY: ("inputs_ready", 1),
    c.EV_INPUTS_FAILED: ("inputs_failed", 1),
    c.EV_OUTPUT_STORED: ("storing", 2),
    c.EV_OUTPUT_REFUSED: ("storing", 2),
    c.EV_OUTPUTS_STORED: ("outputs_stored", 3),
    c.EV_OUTPUTS_FAILED: ("outputs_failed", 3),
}
STATUSES = (
    "preparing",
    "inputs_ready",
    "inputs_failed",
    "storing",
    "outputs_stored",
    "outputs_failed",
)
_ROWS_PER_STATEMENT = 500


def url_digest(url: str) -> str:
    return hashlib.sha256(url.encode("utf-8", "surrogatepass")).hexdigest()


def stream_pos(stream_id: str) -> str:
    ms, _, seq = stream_id.partition("-")
    try:
        return f"{int(ms):020d}-{int(seq or 0):020d}"
    except ValueError:
        return stream_id[:64]


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass
class _ExecDelta:
    first: datetime
    last: datetime
    project_id: str | None = None
    status: tuple[datetime, int, str] | None = None
    inputs: list[int] = field(default_factory=lambda: [0, 0])
    inputs_total: tuple[datetime, int, int] | None = None
    outputs: list[int] = field(default_factory=lambda: [0, 0])
    outputs_total: tuple[datetime, int, int] | None = None
    warning: bool = False


@dataclass
class _Batch:
    execs: dict[str, _ExecDelta] = field(default_factory=dict)
    rows: dict[Table, list[dict[str, Any]]] = field(default_factory=dict)
    datums: list[dict[str, Any]] = field(default_factory=list)
    purges: list[dict[str, Any]] = field(default_factory=list)
    progress: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)

    def execution(self, execution_id: str, ev: Event, project_id: str | None) -> _ExecDelta:
        d = self.execs.get(execution_id)
        if d is None:
            d = self.execs[execution_id] = _ExecDelta(first=ev.time, last=ev.time)
        d.first = min(d.first, ev.time)
        d.last = max(d.last, ev.time)
        if project_id:
            d.project_id = project_id
        lifecycle = LIFECYCLE.get(ev.type)
        if lifecycle is not None:
            candidate = (ev.time, lifecycle[1], lifecycle[0])
            if d.status is None or candidate[:2] >= d.status[:2]:
                d.status = candidate
        return d

    def add(self, table: Table, row: dict[str, Any]) -> None:
        self.rows.setdefault(table, []).append(row)


Handler = Callable[[_Batch, Event], None]


class Projector:
    """Writes events into the read model; ``project`` is safe to call with repeats."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._pg = engine.dialect.name == "postgresql"
        # Built once and run with many parameter sets: SQLAlchemy caches their compiled form
        # (a multi-row ``.values(rows)`` would be compiled anew for every batch).
        events, execs = table_of(EventRow), table_of(Execution)
        self._claim_stmt = self._insert(events).on_conflict_do_nothing().returning(events.c.id)
        self._pg_claim_stmt = text(
            "INSERT INTO events (id, stream_id, stream_pos, type, subject, time) "
            "SELECT * FROM unnest(CAST(:id AS varchar[]), CAST(:stream_id AS varchar[]), "
            "CAST(:stream_pos AS varchar[]), CAST(:type AS varchar[]), "
            "CAST(:subject AS varchar[]), CAST(:time AS timestamp[])) "
            "ON CONFLICT (id) DO NOTHING RETURNING id"
        )
        self._exec_stmt = self._insert(execs).on_conflict_do_nothing()
        self._project_stmt = self._insert(table_of(Project)).on_conflict_do_nothing()
        self._datum_stmt = self._datum_upsert()
        self._purge_stmt = self._purge_upsert()
        self._progress_stmt = self._progress_upsert()

    # -------------------------------------------------------------------- public

    def project(self, events: Sequence[Event | BadEntry]) -> int:
        """Project one batch in one transaction; return how many events were new."""
        with self.engine.begin() as conn:
            return self._project(conn, events)

    def record_gap(self, before: datetime, lost_events: int) -> None:
        """Remember that the stream lost ``lost_events`` unread events before ``before``."""
        with self.engine.begin() as conn:
            stmt = self._insert(table_of(StreamGap)).values(
                before=before, lost_events=lost_events, detected_at=utcnow()
            )
            conn.execute(stmt.on_conflict_do_nothing())

    # -------------------------------------------------------------------- batch

    def _project(self, conn: Connection, entries: Sequence[Event | BadEntry]) -> int:
        bad = [e for e in entries if isinstance(e, BadEntry)]
        if bad:
            self._insert_ignore(
                conn,
                table_of(BadEvent),
                [
                    {"stream_id": b.stream_id, "problem": b.problem, "payload": b.payload,
                     "detected_at": utcnow()}
                    for b in bad
                ],
            )  # fmt: skip
        events = [e for e in entries if isinstance(e, Event)]
        batch = _Batch()
        for ev in events:
            if ev.type == c.EV_PROGRESS:
                _progress(batch, ev)
        fresh = self._claim(conn, [e for e in events if e.type != c.EV_PROGRESS])
        for ev in fresh:
            HANDLERS[ev.type](batch, ev)
        self._flush(conn, batch)
        return len(fresh)

    def _claim(self, conn: Connection, events: list[Event]) -> list[Event]:
        """Insert the events' ids; return, in stream order, the events inserted just now."""
        first: dict[str, Event] = {}
        for ev in events:
            first.setdefault(ev.id, ev)
        if not first:
            return []
        claimed: set[str] = set()
        rows = [
            {"id": ev.id, "stream_id": ev.stream_id, "stream_pos": stream_pos(ev.stream_id),
             "type": ev.type, "subject": ev.subject, "time": ev.time}
            for ev in sorted(first.values(), key=lambda e: e.id)
        ]  # fmt: skip
        if self._pg:
            # One statement over arrays: an executemany with RETURNING becomes multi-row
            # VALUES statements too long for psycopg's query cache, which it then parsed anew
            # (measured: a third of the projector's CPU on PostgreSQL). Same conflict rule,
            # same id order (sorted), so the same waits and no new deadlocks between replicas.
            columns = ("id", "stream_id", "stream_pos", "type", "subject", "time")
            arrays = {k: [r[k] for r in rows] for k in columns}
            claimed.update(conn.execute(self._pg_claim_stmt, arrays).scalars())
        else:
            for chunk in _chunks(rows):
                claimed.update(conn.execute(self._claim_stmt, chunk).scalars())
        return [ev for ev in first.values() if ev.id in claimed]

    def _flush(self, conn: Connection, batch: _Batch) -> None:
        if batch.execs:
            self._write_executions(conn, batch.execs)
        for table, rows in batch.rows.items():
            for chunk in _chunks(rows):
                conn.execute(table.insert(), chunk)
        # One row per key and statement: PostgreSQL refuses to upsert one row twice in one
        # INSERT (what executemany becomes with insertmanyvalues).
        for stmt, rows in (
            (self._datum_stmt, list({r["datum_id"]: r for r in batch.datums}.values())),
            (self._purge_stmt, list({r["datum_id"]: r for r in batch.purges}.values())),
            (self._progress_stmt, list(batch.progress.values())),
        ):
            for chunk in _chunks(rows):
                conn.execute(stmt, chunk)

    def _write_executions(self, conn: Connection, execs: dict[str, _ExecDelta]) -> None:
        table = table_of(Execution)
        ids = sorted(execs)
        base = [
            {"execution_id": i, "project_id": execs[i].project_id, "status": "preparing",
             "status_rank": -1, "inputs_files": 0, "inputs_bytes": 0, "outputs_files": 0,
             "outputs_bytes": 0, "has_warning": False, "created_at": execs[i].first,
             "updated_at": execs[i].last}
            for i in ids
        ]  # fmt: skip
        for chunk in _chunks(base):
            conn.execute(self._exec_stmt, chunk)
        projects = sorted({d.project_id for d in execs.values() if d.project_id})
        if projects:
            conn.execute(self._project_stmt, [{"project_id": p} for p in projects])
        current: dict[str, Any] = {}
        for chunk_ids in _chunks(ids):
            query = select(table).where(table.c.execution_id.in_(chunk_ids))
            query = query.order_by(table.c.execution_id)
            if self._pg:
                query = query.with_for_update()
            current.update({r.execution_id: r for r in conn.execute(query)})
        updates = [_merged(current[i], execs[i]) | {"b_id": i} for i in ids]
        conn.execute(
            update(table).where(table.c.execution_id == bindparam("b_id")),
            updates,
        )

    def _datum_upsert(self) -> Any:
        table = table_of(DatumRow)
        stmt = self._insert(table)
        fresh = ("execution_id", "path", "uri", "key", "size", "md5", "sha1", "sha256",
                 "deduplicated", "tags", "alias", "dataset_versions")  # fmt: skip
        return stmt.on_conflict_do_update(
            index_elements=[table.c.datum_id],
            set_={k: stmt.excluded[k] for k in fresh}
            # A purge projected earlier left a stub without a creation time.
            | {"created_at": func.coalesce(table.c.created_at, stmt.excluded.created_at)},
        )

    def _purge_upsert(self) -> Any:
        table = table_of(DatumRow)
        stmt = self._insert(table)
        return stmt.on_conflict_do_update(
            index_elements=[table.c.datum_id],
            set_={"purged": True, "content_removed": stmt.excluded.content_removed,
                  "purged_at": stmt.excluded.purged_at},
        )  # fmt: skip

    def _progress_upsert(self) -> Any:
        table = table_of(Progress)
        stmt = self._insert(table)
        return stmt.on_conflict_do_update(
            index_elements=[table.c.execution_id, table.c.path],
            set_={k: stmt.excluded[k]
                  for k in ("bytes_done", "bytes_total", "rate_bytes_s", "eta_s", "time")},
            where=table.c.time <= stmt.excluded.time,
        )  # fmt: skip

    # -------------------------------------------------------------------- dialects

    def _insert(self, table: Table) -> Any:
        return (postgresql.insert if self._pg else sqlite.insert)(table)

    def _insert_ignore(self, conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
        stmt: Insert = self._insert(table).on_conflict_do_nothing()
        for chunk in _chunks(rows):
            conn.execute(stmt, chunk)


def _merged(row: Any, d: _ExecDelta) -> dict[str, Any]:
    out: dict[str, Any] = {
        "created_at": min(row.created_at, d.first),
        "updated_at": max(row.updated_at, d.last),
        "project_id": row.project_id or d.project_id,
        "status": row.status,
        "status_time": row.status_time,
        "status_rank": row.status_rank,
        "has_warning": row.has_warning or d.warning,
    }
    if d.status is not None:
        time, rank, status = d.status
        if row.status_time is None or (time, rank) >= (row.status_time, row.status_rank):
            out |= {"status": status, "status_time": time, "status_rank": rank}
    for side in ("inputs", "outputs"):
        delta: list[int] = getattr(d, side)
        out[f"{side}_files"] = getattr(row, f"{side}_files") + delta[0]
        out[f"{side}_bytes"] = getattr(row, f"{side}_bytes") + delta[1]
        out |= _total(row, side, getattr(d, f"{side}_total"))
    return out


def _total(row: Any, side: str, total: tuple[datetime, int, int] | None) -> dict[str, Any]:
    """The summary of the latest summary event (by time) of one side."""
    known = getattr(row, f"{side}_total_time")
    if total is None or (known is not None and known > total[0]):
        total = (known, getattr(row, f"{side}_total_files"), getattr(row, f"{side}_total_bytes"))
    time, files, size = total
    return {f"{side}_total_time": time, f"{side}_total_files": files, f"{side}_total_bytes": size}


def _chunks(rows: Sequence[Any], size: int = _ROWS_PER_STATEMENT) -> Iterable[list[Any]]:
    for start in range(0, len(rows), size):
        yield list(rows[start : start + size])


# ------------------------------------------------------------------------ handlers


def _downloaded(b: _Batch, ev: Event) -> None:
    d = ev.data
    assert isinstance(d, m.InputDownloaded)
    delta = b.execution(d.execution_id, ev, d.project_id)
    delta.inputs[0] += 1
    delta.inputs[1] += d.size
    b.add(
        table_of(InputFile),
        {"event_id": ev.id, "execution_id": d.execution_id, "project_id": d.project_id,
         "input": d.input, "url": d.url, "url_digest": url_digest(d.url), "path": d.path,
         "size": d.size, "md5": d.md5, "sha1": d.sha1, "sha256": d.sha256, "cached": d.cached,
         "seconds": d.seconds, "etag": d.source.etag, "version": d.source.version,
         "last_modified": d.source.last_modified, "checksum": d.source.checksum,
         "time": ev.time},
    )  # fmt: skip


def _changed(b: _Batch, ev: Event) -> None:
    d = ev.data
    assert isinstance(d, m.InputChanged)
    b.execution(d.execution_id, ev, d.project_id).warning = True
    b.add(
        table_of(InputChange),
        {"event_id": ev.id, "execution_id": d.execution_id, "project_id": d.project_id,
         "input": d.input, "url": d.url, "url_digest": url_digest(d.url), "message": d.message,
         "previous": d.previous.model_dump(), "current": d.current.model_dump(),
         "time": ev.time},
    )  # fmt: skip


def _skipped(b: _Batch, ev: Event) -> None:
    d = ev.data
    assert isinstance(d, m.InputSkipped)
    b.execution(d.execution_id, ev, None)
    b.add(
        table_of(InputSkipped),
        {"event_id": ev.id, "execution_id": d.execution_id, "input": d.input, "url": d.url,
         "reason": d.reason, "time": ev.time},
    )  # fmt: skip


def _inputs_ready(b: _Batch, ev: Event) -> None:
    d = ev.data
    assert isinstance(d, m.InputsReady)
    b.execution(d.execution_id, ev, d.project_id).inputs_total = (ev.time, d.files, d.bytes)


def _inputs_failed(b: _Batch, ev: Event) -> None:
    d = ev.data
    assert isinstance(d, m.InputsFailed)
    b.execution(d.execution_id, ev, d.project_id)
    b.add(
        table_of(Failure),
        {"event_id": ev.id, "execution_id": d.execution_id, "stage": "inputs", "input": d.input,
         "url": d.url, "code": d.error.code, "message": d.error.message, "time": ev.time},
    )  # fmt: skip


def _output_stored(b: _Batch, ev: Event) -> None:
    d = ev.data
    assert isinstance(d, m.OutputStored)
    delta = b.execution(d.execution_id, ev, d.project_id)
    delta.outputs[0] += 1
    delta.outputs[1] += d.size
    b.datums.append(
        {"datum_id": d.datum_id, "project_id": d.project_id, "execution_id": d.execution_id,
         "path": d.path, "uri": d.uri, "key": d.key, "size": d.size, "md5": d.md5,
         "sha1": d.sha1, "sha256": d.sha256, "deduplicated": d.deduplicated, "tags": d.tags,
         "alias": d.alias, "dataset_versions": d.dataset_versions, "created_at": ev.time,
         "purged": False},
    )  # fmt: skip


def _output_refused(b: _Batch, ev: Event) -> None:
    d = ev.data
    assert isinstance(d, m.OutputRefused)
    b.execution(d.execution_id, ev, None)
    b.add(
        table_of(Refused),
        {"event_id": ev.id, "execution_id": d.execution_id, "path": d.path, "reason": d.reason,
         "time": ev.time},
    )  # fmt: skip


def _outputs_stored(b: _Batch, ev: Event) -> None:
    d = ev.data
    assert isinstance(d, m.OutputsStored)
    b.execution(d.execution_id, ev, d.project_id).outputs_total = (ev.time, d.files, d.bytes)


def _outputs_failed(b: _Batch, ev: Event) -> None:
    d = ev.data
    assert isinstance(d, m.OutputsFailed)
    b.execution(d.execution_id, ev, d.project_id)
    b.add(
        table_of(Failure),
        {"event_id": ev.id, "execution_id": d.execution_id, "stage": "outputs", "input": None,
         "url": None, "code": d.error.code, "message": d.error.message, "time": ev.time},
    )  # fmt: skip


def _purged(b: _Batch, ev: Event) -> None:
    d = ev.data
    assert isinstance(d, m.DatumPurged)
    b.purges.append(
        {"datum_id": d.datum_id, "project_id": d.project_id, "key": d.key, "purged": True,
         "content_removed": d.content_removed, "purged_at": ev.time, "tags": [],
         "dataset_versions": []},
    )  # fmt: skip


def _alias_moved(b: _Batch, ev: Event) -> None:
    d = ev.data
    assert isinstance(d, m.AliasMoved)
    b.add(
        table_of(AliasMove),
        {"event_id": ev.id, "project_id": d.project_id, "alias": d.alias,
         "datum_id": d.datum_id, "previous_datum_id": d.previous_datum_id,
         "execution_id": d.execution_id, "time": ev.time},
    )  # fmt: skip


def _dataset_version(b: _Batch, ev: Event) -> None:
    d = ev.data
    assert isinstance(d, m.DatasetVersionCreated)
    for datum_id in dict.fromkeys(d.datum_ids):
        b.add(
            table_of(DatasetMember),
            {"event_id": ev.id, "datum_id": datum_id, "project_id": d.project_id,
             "dataset": d.dataset, "version": d.version, "files": d.files, "bytes": d.bytes,
             "time": ev.time},
        )  # fmt: skip


def _nothing(_b: _Batch, _ev: Event) -> None:
    """``haul.message.rejected`` and ``haul.purge.done`` name no execution (a purge's facts
    come as ``haul.datum.purged``): the events table is their record."""


def _progress(b: _Batch, ev: Event) -> None:
    d = ev.data
    assert isinstance(d, m.TransferProgress)
    # A report makes its execution known: the first file's own event comes only when that
    # file is complete, and its progress is what the details page must show before that.
    # Idempotent (times are min/max, no counts, no status), so repeats need no claim.
    b.execution(d.execution_id, ev, None)
    key = (d.execution_id, d.path[:1000])
    row = {"execution_id": key[0], "path": key[1], "bytes_done": d.bytes_done,
           "bytes_total": d.bytes_total, "rate_bytes_s": d.rate_bytes_s, "eta_s": d.eta_s,
           "time": ev.time}  # fmt: skip
    old = b.progress.get(key)
    if old is None or old["time"] <= ev.time:
        b.progress[key] = row


HANDLERS: dict[str, Handler] = {
    c.EV_INPUT_DOWNLOADED: _downloaded,
    c.EV_INPUT_CHANGED: _changed,
    c.EV_INPUT_SKIPPED: _skipped,
    c.EV_INPUTS_READY: _inputs_ready,
    c.EV_INPUTS_FAILED: _inputs_failed,
    c.EV_OUTPUT_STORED: _output_stored,
    c.EV_OUTPUT_REFUSED: _output_refused,
    c.EV_OUTPUTS_STORED: _outputs_stored,
    c.EV_OUTPUTS_FAILED: _outputs_failed,
    c.EV_DATUM_PURGED: _purged,
    c.EV_ALIAS_MOVED: _alias_moved,
    c.EV_DATASET_VERSION_CREATED: _dataset_version,
    c.EV_MESSAGE_REJECTED: _nothing,
    c.EV_PURGE_DONE: _nothing,
}
