"""Every query of the dashboard, in one module; pages and API both call these.

Listing pagination is keyset on ``executions.seq`` (the order an execution was first seen,
which never changes), newest first: a cursor names the last ``seq`` shown, and the next page
is everything older. An execution first seen after the first page was read sorts above that
page, so a walk through the pages returns every execution it started with exactly once.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, and_, func, or_, select

from dashboard import views as v
from dashboard.models import (
    AliasMove,
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
from dashboard.projector import url_digest

MAX_LIMIT = 200
_TIMELINE_LIMIT = 2000


class BadCursor(ValueError):
    """A cursor this dashboard did not hand out."""


class NotFound(LookupError):
    """No such execution / datum / URL in the read model."""


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.isoformat(timespec="milliseconds") + "Z"


def _iso(value: datetime) -> str:
    return value.isoformat(timespec="milliseconds") + "Z"


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"s{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadCursor("cursor: not a cursor this API returned") from None
    if not text.startswith("s") or not text[1:].isdigit() or len(text) > 20:
        raise BadCursor("cursor: not a cursor this API returned")
    return int(text[1:])


class Queries:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -------------------------------------------------------------- listing

    def executions(
        self,
        project: str | None = None,
        status: str | None = None,
        warnings: bool | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> v.ExecutionPage:
        t = table_of(Execution)
        limit = max(1, min(limit, MAX_LIMIT))
        query = select(t).order_by(t.c.seq.desc()).limit(limit + 1)
        if project:
            query = query.where(t.c.project_id == project)
        if status:
            query = query.where(t.c.status == status)
        if warnings is not None:
            # "=", not "IS": PostgreSQL cannot search an index with IS TRUE (measured: a
            # backward scan of every execution, filtered, instead of the warning index).
            query = query.where(t.c.has_warning == warnings)
        if cursor:
            query = query.where(t.c.seq < decode_cursor(cursor))
        with self.engine.connect() as conn:
            rows = list(conn.execute(query))
            more = len(rows) > limit
            rows = rows[:limit]
            items = self._items(conn, rows)
            gap = _gap(conn)
        return v.ExecutionPage(
            items=items,
            next=encode_cursor(rows[-1].seq) if more and rows else None,
            incomplete_before=gap,
        )

    def _items(self, conn: Connection, rows: Sequence[Any]) -> list[v.ExecutionItem]:
        """Listing items, with the warnings and errors of all of them in two queries."""
        warns = _warnings(conn, [r.execution_id for r in rows if r.has_warning])
        errors = _latest_errors(
            conn, [r.execution_id for r in rows if r.status.endswith("_failed")]
        )
        return [_item(r, warns.get(r.execution_id, []), errors.get(r.execution_id)) for r in rows]

    # -------------------------------------------------------------- details

    def execution(self, execution_id: str) -> v.ExecutionDetails:
        t = table_of(Execution)
        with self.engine.connect() as conn:
            row = conn.execute(select(t).where(t.c.execution_id == execution_id)).first()
            if row is None:
                raise NotFound(f"no execution {execution_id!r}")
            item = self._items(conn, [row])[0]
            return v.ExecutionDetails(
                execution_id=item.execution_id,
                project_id=item.project_id,
                status=item.status,
                inputs_count=item.inputs,
                outputs_count=item.outputs,
                warnings=item.warnings,
                error=item.error,
                created_at=item.created_at,
                updated_at=item.updated_at,
                inputs=_inputs_of(conn, execution_id),
                changes=[_change(r) for r in _by_exec(conn, InputChange, execution_id)],
                skipped=[
                    v.Skipped(input=r.input, url=r.url, reason=r.reason, time=_iso(r.time))
                    for r in _by_exec(conn, InputSkipped, execution_id)
                ],
                failures=[
                    v.Failure(
                        stage=r.stage,
                        input=r.input,
                        url=r.url,
                        code=r.code,
                        message=r.message,
                        time=_iso(r.time),
                    )
                    for r in _by_exec(conn, Failure, execution_id)
                ],
                outputs=_outputs_of(conn, execution_id),
                refused=[
                    v.RefusedOutput(path=r.path, reason=r.reason, time=_iso(r.time))
                    for r in _by_exec(conn, Refused, execution_id)
                ],
                events=_timeline(conn, execution_id),
                progress=_progress(conn, execution_id, row.status),
                incomplete_before=_gap(conn),
            )

    # -------------------------------------------------------------- datums

    def datum(self, datum_id: str) -> v.DatumDetails:
        t = table_of(DatumRow)
        with self.engine.connect() as conn:
            row = conn.execute(select(t).where(t.c.datum_id == datum_id)).first()
            if row is None:
                raise NotFound(f"no datum {datum_id!r}")
            producer = None
            producer_inputs: list[v.InputRead] = []
            if row.execution_id:
                e = table_of(Execution)
                prow = conn.execute(select(e).where(e.c.execution_id == row.execution_id)).first()
                if prow is not None:
                    producer = self._items(conn, [prow])[0]
                producer_inputs = _inputs_of(conn, row.execution_id)
            return v.DatumDetails(
                **_output(row).model_dump(),
                project_id=row.project_id,
                execution_id=row.execution_id,
                created_at=iso(row.created_at),
                content_removed=row.content_removed,
                purged_at=iso(row.purged_at),
                alias_moves=_alias_moves(conn, row.project_id, datum_id),
                dataset_memberships=_memberships(conn, datum_id),
                producer=producer,
                producer_inputs=producer_inputs,
                used_by=_uses(conn, row),
                incomplete_before=_gap(conn),
            )

    # -------------------------------------------------------------- URL history

    def url_history(self, project: str, url: str) -> v.UrlHistory:
        f = table_of(InputFile)
        ch = table_of(InputChange)
        digest = url_digest(url)
        with self.engine.connect() as conn:
            reads = list(
                conn.execute(
                    select(f)
                    .where(f.c.project_id == project, f.c.url_digest == digest, f.c.url == url)
                    .order_by(f.c.time, f.c.event_id)
                )
            )
            if not reads:
                raise NotFound(f"project {project!r} never read that URL")
            messages = {
                r.execution_id: r.message
                for r in conn.execute(
                    select(ch.c.execution_id, ch.c.message).where(
                        ch.c.project_id == project, ch.c.url_digest == digest, ch.c.url == url
                    )
                )
            }
            gap = _gap(conn)
        out: list[v.UrlRead] = []
        previous: str | None = None
        for r in reads:
            changed = r.execution_id in messages or (previous is not None and previous != r.sha256)
            out.append(
                v.UrlRead(
                    execution_id=r.execution_id, input=r.input, path=r.path, time=_iso(r.time),
                    size=r.size, md5=r.md5, sha1=r.sha1, sha256=r.sha256, cached=r.cached,
                    changed=changed, change_message=messages.get(r.execution_id),
                )
            )  # fmt: skip
            previous = r.sha256
        return v.UrlHistory(
            project_id=project,
            url=url,
            reads=out,
            change_points=sum(1 for r in out if r.changed),
            incomplete_before=gap,
        )

    def projects(self) -> list[str]:
        t = table_of(Project)
        with self.engine.connect() as conn:
            rows = conn.execute(select(t.c.project_id).order_by(t.c.project_id).limit(500))
            return [r[0] for r in rows]

    # -------------------------------------------------------------- health

    def last_event_time(self) -> str | None:
        with self.engine.connect() as conn:
            return iso(conn.execute(select(func.max(table_of(EventRow).c.time))).scalar())

    def incomplete_before(self) -> str | None:
        with self.engine.connect() as conn:
            return _gap(conn)


# ------------------------------------------------------------------ helpers


def _gap(conn: Connection) -> str | None:
    return iso(conn.execute(select(func.max(table_of(StreamGap).c.before))).scalar())


def _item(row: Any, warns: list[v.InputWarning], error: v.ErrorInfo | None) -> v.ExecutionItem:
    return v.ExecutionItem(
        execution_id=row.execution_id,
        project_id=row.project_id,
        status=row.status,
        inputs=_counts(
            row.inputs_total_files, row.inputs_total_bytes, row.inputs_files, row.inputs_bytes
        ),
        outputs=_counts(
            row.outputs_total_files, row.outputs_total_bytes, row.outputs_files, row.outputs_bytes
        ),
        warnings=warns,
        error=error,
        created_at=_iso(row.created_at),
        updated_at=_iso(row.updated_at),
    )


def _counts(total_files: int | None, total_bytes: int | None, files: int, size: int) -> v.Counts:
    """The summary event's totals once known, else what the per-file events add up to."""
    if total_files is not None and total_bytes is not None:
        return v.Counts(files=total_files, bytes=total_bytes)
    return v.Counts(files=files, bytes=size)


def _warnings(conn: Connection, ids: list[str]) -> dict[str, list[v.InputWarning]]:
    out: dict[str, list[v.InputWarning]] = {}
    if not ids:
        return out
    t = table_of(InputChange)
    query = (
        select(t.c.execution_id, t.c.input, t.c.url, t.c.message)
        .where(t.c.execution_id.in_(ids))
        .order_by(t.c.time, t.c.event_id)
    )
    for r in conn.execute(query):
        out.setdefault(r.execution_id, []).append(
            v.InputWarning(input=r.input, url=r.url, message=r.message)
        )
    return out


def _latest_errors(conn: Connection, ids: list[str]) -> dict[str, v.ErrorInfo]:
    out: dict[str, v.ErrorInfo] = {}
    if not ids:
        return out
    t = table_of(Failure)
    query = select(t).where(t.c.execution_id.in_(ids)).order_by(t.c.time, t.c.event_id)
    for r in conn.execute(query):
        out[r.execution_id] = v.ErrorInfo(code=r.code, message=r.message)
    return out


def _by_exec(conn: Connection, model: Any, execution_id: str) -> Iterable[Any]:
    t = table_of(model)
    query = select(t).where(t.c.execution_id == execution_id).order_by(t.c.time, t.c.event_id)
    return conn.execute(query)


def _input(r: Any) -> v.InputRead:
    return v.InputRead(
        input=r.input, url=r.url, path=r.path, size=r.size, md5=r.md5, sha1=r.sha1,
        sha256=r.sha256, cached=r.cached, seconds=r.seconds,
        source=v.Source(etag=r.etag, version=r.version, last_modified=r.last_modified,
                        checksum=r.checksum),
        time=_iso(r.time),
    )  # fmt: skip


def _inputs_of(conn: Connection, execution_id: str) -> list[v.InputRead]:
    return [_input(r) for r in _by_exec(conn, InputFile, execution_id)]


def _change(r: Any) -> v.Change:
    return v.Change(
        input=r.input, url=r.url, message=r.message, previous=v.Seen(**r.previous),
        current=v.Seen(**r.current), time=_iso(r.time),
    )  # fmt: skip


def _output(r: Any) -> v.Output:
    return v.Output(
        datum_id=r.datum_id, path=r.path, uri=r.uri, key=r.key, size=r.size, md5=r.md5,
        sha1=r.sha1, sha256=r.sha256, deduplicated=r.deduplicated, tags=list(r.tags or []),
        alias=r.alias, dataset_versions=list(r.dataset_versions or []), purged=r.purged,
    )  # fmt: skip


def _outputs_of(conn: Connection, execution_id: str) -> list[v.Output]:
    t = table_of(DatumRow)
    query = select(t).where(t.c.execution_id == execution_id).order_by(t.c.path, t.c.datum_id)
    return [_output(r) for r in conn.execute(query)]


def _timeline(conn: Connection, execution_id: str) -> list[v.EventRef]:
    t = table_of(EventRow)
    query = (
        select(t.c.id, t.c.type, t.c.time)
        .where(t.c.subject == execution_id)
        .order_by(t.c.time, t.c.stream_pos)
        .limit(_TIMELINE_LIMIT)
    )
    return [v.EventRef(id=r.id, type=r.type, time=_iso(r.time)) for r in conn.execute(query)]


def _progress(conn: Connection, execution_id: str, status: str) -> list[v.TransferProgress]:
    if status != "preparing":
        return []  # the transfers are over; their last reports are history, not progress
    t = table_of(Progress)
    query = select(t).where(t.c.execution_id == execution_id).order_by(t.c.path)
    return [
        v.TransferProgress(path=r.path, bytes_done=r.bytes_done, bytes_total=r.bytes_total,
                           rate_bytes_s=r.rate_bytes_s, eta_s=r.eta_s, time=_iso(r.time))
        for r in conn.execute(query)
    ]  # fmt: skip


def _alias_moves(conn: Connection, project: str, datum_id: str) -> list[v.AliasMoveOut]:
    t = table_of(AliasMove)
    rows = list(
        conn.execute(
            select(t)
            .where(
                t.c.project_id == project,
                or_(t.c.datum_id == datum_id, t.c.previous_datum_id == datum_id),
            )
            .order_by(t.c.time, t.c.event_id)
        )
    )
    current: dict[str, str] = {}
    for alias in {r.alias for r in rows}:
        latest = conn.execute(
            select(t.c.datum_id)
            .where(t.c.project_id == project, t.c.alias == alias)
            .order_by(t.c.time.desc(), t.c.event_id.desc())
            .limit(1)
        ).scalar()
        if latest is not None:
            current[alias] = latest
    return [
        v.AliasMoveOut(alias=r.alias, datum_id=r.datum_id, previous_datum_id=r.previous_datum_id,
                       execution_id=r.execution_id, time=_iso(r.time),
                       current=current.get(r.alias) == datum_id and r.datum_id == datum_id)
        for r in rows
    ]  # fmt: skip


def _memberships(conn: Connection, datum_id: str) -> list[v.DatasetVersionRef]:
    t = table_of(DatasetMember)
    query = select(t).where(t.c.datum_id == datum_id).order_by(t.c.time, t.c.dataset)
    return [
        v.DatasetVersionRef(dataset=r.dataset, version=r.version,
                            uri=f"dataset://{r.dataset}/{r.version}", files=r.files,
                            bytes=r.bytes)
        for r in conn.execute(query)
    ]  # fmt: skip


def _uses(conn: Connection, datum: Any) -> list[v.Use]:
    """Reads of this datum: by its ``datum://`` URL, or of the same bytes (sha256)."""
    t = table_of(InputFile)
    uri = f"datum://{datum.datum_id}"
    by_uri = and_(t.c.url_digest == url_digest(uri), t.c.url == uri)
    cond = by_uri if not datum.sha256 else or_(by_uri, t.c.sha256 == datum.sha256)
    query = (
        select(t.c.execution_id, t.c.input, t.c.url, t.c.sha256, t.c.time)
        .where(t.c.project_id == datum.project_id, cond)
        .order_by(t.c.time, t.c.event_id)
        .limit(500)
    )
    return [
        v.Use(execution_id=r.execution_id, input=r.input, url=r.url,
              matched_by="uri" if r.url == uri else "sha256", time=_iso(r.time))
        for r in conn.execute(query)
        if r.execution_id != datum.execution_id
    ]  # fmt: skip
