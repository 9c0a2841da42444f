"""The projector on SQLite and PostgreSQL: events in, the read model's facts out, idempotent."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import Engine, func, select

from dashboard.models import BadEvent, EventRow
from dashboard.parse import parse_entry
from dashboard.projector import HANDLERS, Projector
from dashboard.queries import BadCursor, NotFound, Queries
from tests.dashboard import factory as f
from worker import constants as c
from worker import models as m

U = "https://example.test/data/labels.gz"


def test_execution_lifecycle_counts_and_warning(engine: Engine) -> None:
    """Downloads, a change and inputs.ready give the listing's counts, status and warning."""
    p = Projector(engine)
    events = [
        f.downloaded("e1", "p", U, "v1", at=0),
        f.ready("e1", "p", 1, 10, at=1),
        f.downloaded("e2", "p", U, "v2", at=10),
        f.changed("e2", "p", U, "v1", "v2", "e1", at=10),
        f.ready("e2", "p", 1, 10, at=11),
    ]
    assert p.project([f.entry(e) for e in events]) == 5
    q = Queries(engine)
    page = q.executions()
    assert [i.execution_id for i in page.items] == ["e2", "e1"]
    e2 = page.items[0]
    assert e2.status == "inputs_ready"
    assert (e2.inputs.files, e2.inputs.bytes) == (1, 10)
    assert [(w.input, w.url) for w in e2.warnings] == [("data", U)]
    assert page.items[1].warnings == []
    details = q.execution("e2")
    assert details.changes[0].previous.execution_id == "e1"
    assert details.changes[0].previous.sha256 == f.hashes("v1")["sha256"]
    assert details.inputs[0].source.etag == '"e1"'
    assert [e.type for e in details.events] == [
        c.EV_INPUT_DOWNLOADED, c.EV_INPUT_CHANGED, c.EV_INPUTS_READY,
    ]  # fmt: skip
    assert q.executions(warnings=True).items[0].execution_id == "e2"
    assert [i.execution_id for i in q.executions(warnings=False).items] == ["e1"]


def test_redelivered_events_count_once(engine: Engine) -> None:
    """The same event ids projected again (in one batch and in a later one) change nothing."""
    p = Projector(engine)
    events = [f.downloaded("e1", "p", U, "v1"), f.downloaded("e1", "p", U + "2", "v2")]
    entries = [f.entry(e) for e in events]
    assert p.project(entries + entries) == 2
    assert p.project([f.entry(e) for e in events]) == 0
    item = Queries(engine).executions().items[0]
    assert (item.inputs.files, item.inputs.bytes) == (2, 20)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(EventRow)).scalar() == 2


def test_status_follows_latest_lifecycle_event_in_any_order(engine: Engine) -> None:
    """outputs.stored projected before inputs.ready still leaves the status outputs_stored."""
    p = Projector(engine)
    p.project([f.entry(f.outputs_stored("e1", "p", 1, 5, at=20))])
    p.project([f.entry(f.ready("e1", "p", 1, 10, at=5))])
    item = Queries(engine).executions().items[0]
    assert item.status == "outputs_stored"
    assert item.created_at == "2026-01-02T03:04:10.000Z"
    assert item.updated_at == "2026-01-02T03:04:25.000Z"


def test_failure_has_code_and_message(engine: Engine) -> None:
    """inputs.failed: status inputs_failed and the listing's error is the failure's."""
    Projector(engine).project([f.entry(f.inputs_failed("e1", "p", U))])
    q = Queries(engine)
    item = q.executions(status="inputs_failed").items[0]
    assert item.error is not None and item.error.code == "not_found"
    assert q.execution("e1").failures[0].url == U
    assert q.executions(status="inputs_ready").items == []


def test_datum_with_tags_alias_versions_and_uses(engine: Engine) -> None:
    """A datum's page facts: tags, alias, dataset version, producer inputs, later uses, purge."""
    p = Projector(engine)
    d = "a" * 32
    alias = m.AliasMoved(project_id="p", alias="best", datum_id=d, previous_datum_id=None,
                         execution_id="e1")  # fmt: skip
    version = m.DatasetVersionCreated(project_id="p", dataset="ds", version="v1",
                                      datum_ids=[d], files=1, bytes=5)  # fmt: skip
    p.project([
        f.entry(f.downloaded("e1", "p", U, "v1")),
        f.entry(f.stored("e1", "p", d, "model.pt", "model", at=3, tags=["t1"], alias="best",
                         dataset_versions=["dataset://ds/v1"])),
        f.entry(f.raw(c.EV_ALIAS_MOVED, alias, "p", "best", d, subject="e1", at=3)),
        f.entry(f.raw(c.EV_DATASET_VERSION_CREATED, version, "p", "ds", "v1", subject="e1")),
        f.entry(f.outputs_stored("e1", "p", 1, 5, at=4)),
        f.entry(f.downloaded("e2", "p", f"datum://{d}", "model", at=9)),
    ])  # fmt: skip
    q = Queries(engine)
    datum = q.datum(d)
    assert datum.tags == ["t1"] and datum.alias == "best"
    assert datum.dataset_versions == ["dataset://ds/v1"]
    assert datum.dataset_memberships[0].uri == "dataset://ds/v1"
    assert datum.alias_moves[0].current
    assert datum.producer is not None and datum.producer.execution_id == "e1"
    assert [i.url for i in datum.producer_inputs] == [U]
    assert [(u.execution_id, u.matched_by) for u in datum.used_by] == [("e2", "uri")]
    assert q.execution("e1").outputs[0].datum_id == d
    purge = m.DatumPurged(project_id="p", datum_id=d, key="k", content_removed=True)
    p.project([f.entry(f.raw(c.EV_DATUM_PURGED, purge, "p", d, subject="e1", at=30))])
    purged = q.datum(d)
    assert purged.purged and purged.content_removed and purged.tags == ["t1"]


def test_url_history_marks_change_points(engine: Engine) -> None:
    """Three reads of one URL, the content changing at the second: one change point."""
    p = Projector(engine)
    p.project([
        f.entry(f.downloaded("e1", "p", U, "v1", at=0)),
        f.entry(f.downloaded("e2", "p", U, "v2", at=10)),
        f.entry(f.changed("e2", "p", U, "v1", "v2", "e1", at=10)),
        f.entry(f.downloaded("e3", "p", U, "v2", at=20)),
    ])  # fmt: skip
    history = Queries(engine).url_history("p", U)
    assert [(r.execution_id, r.changed) for r in history.reads] == [
        ("e1", False), ("e2", True), ("e3", False),
    ]  # fmt: skip
    assert history.change_points == 1
    assert history.reads[1].change_message is not None
    with pytest.raises(NotFound):
        Queries(engine).url_history("other", U)


def test_pagination_exactly_once_while_executions_arrive(engine: Engine) -> None:
    """Walking the pages while new executions are projected returns each old one once."""
    p = Projector(engine)
    p.project([f.entry(f.ready(f"e{i:03}", "p", 1, 1, at=i)) for i in range(25)])
    q = Queries(engine)
    seen: list[str] = []
    cursor = None
    arriving = 100
    while True:
        page = q.executions(limit=7, cursor=cursor)
        seen += [i.execution_id for i in page.items]
        p.project([f.entry(f.ready(f"e{arriving}", "p", 1, 1, at=arriving))])
        arriving += 1
        if page.next is None:
            break
        cursor = page.next
    assert sorted(seen) == [f"e{i:03}" for i in range(25)]
    assert len(seen) == len(set(seen))
    with pytest.raises(BadCursor):
        q.executions(cursor="not-a-cursor")


def test_bad_entries_are_kept_with_the_reason(engine: Engine) -> None:
    """Unparseable or unknown events are recorded (not projected, not lost)."""
    p = Projector(engine)
    bad = [
        parse_entry("1-1", {"event": "{not json"}),
        parse_entry("1-2", {"event": json.dumps({"type": "haul.nope", "id": "x"})}),
        parse_entry("1-3", {"other": "x"}),
    ]
    assert p.project(bad) == 0
    with engine.connect() as conn:
        problems = dict(conn.execute(select(BadEvent.stream_id, BadEvent.problem)).all())
    assert set(problems) == {"1-1", "1-2", "1-3"}
    assert "unknown event type" in problems["1-2"]


def test_every_event_type_the_worker_publishes_is_projected(engine: Engine) -> None:
    """Each type of ``worker.models.EVENT_DATA`` has a handler: ``haul.purge.done`` (every
    purge's outcome) once raised KeyError in the consumer thread, which then stopped for good."""
    assert set(m.EVENT_DATA) == set(HANDLERS) | {c.EV_PROGRESS}
    done = f.raw(c.EV_PURGE_DONE, m.PurgeDone(project_id="p", purged=["d1"], unknown=[]), "p")
    p = Projector(engine)
    assert p.project([f.entry(done), f.entry(f.ready("e1", "p", 1, 10))]) == 2
    assert Queries(engine).executions().items[0].execution_id == "e1"


def test_unknown_fields_from_a_newer_worker_are_ignored(engine: Engine) -> None:
    """An event with an extra data field still projects (forward compatible)."""
    ev = f.ready("e1", "p", 3, 30)
    ev["data"]["new_field"] = 1
    assert Projector(engine).project([f.entry(ev)]) == 1
    assert Queries(engine).executions().items[0].inputs.files == 3


def test_progress_keeps_the_newest_report(engine: Engine) -> None:
    """Progress reports share one id; the newest one is shown while inputs are prepared."""
    p = Projector(engine)

    def prog(done: int, at: float) -> dict:
        data = m.TransferProgress(
            execution_id="e1",
            path="big.bin",
            bytes_done=done,
            bytes_total=100,
            rate_bytes_s=1.0,
            eta_s=2.0,
        )
        return f.raw(c.EV_PROGRESS, data, "e1", at=at)

    p.project([f.entry(f.downloaded("e1", "p", U, "v1"))])
    p.project([f.entry(prog(50, 2)), f.entry(prog(20, 1))])
    p.project([f.entry(prog(10, 0.5))])
    assert [x.bytes_done for x in Queries(engine).execution("e1").progress] == [50]
    p.project([f.entry(f.ready("e1", "p", 1, 10, at=3))])
    assert Queries(engine).execution("e1").progress == []


def test_progress_before_any_file_shows_the_execution(engine: Engine) -> None:
    """A first file still downloading: its reports alone list the execution as preparing,
    with the transfer; the later events fill in the project and end the transfer."""
    p = Projector(engine)
    data = m.TransferProgress(execution_id="e1", path="big.bin", bytes_done=30,
                              bytes_total=100, rate_bytes_s=1.0, eta_s=70.0)  # fmt: skip
    report = f.entry(f.raw(c.EV_PROGRESS, data, "e1", at=1))
    p.project([report])
    p.project([report])  # a repeat changes nothing
    q = Queries(engine)
    [item] = q.executions().items
    assert (item.execution_id, item.status, item.project_id) == ("e1", "preparing", None)
    assert (item.inputs.files, item.inputs.bytes) == (0, 0)
    assert [x.bytes_done for x in q.execution("e1").progress] == [30]
    p.project([f.entry(f.downloaded("e1", "p", U, "v1", at=2)),
               f.entry(f.ready("e1", "p", 1, 10, at=3))])  # fmt: skip
    details = q.execution("e1")
    assert (details.project_id, details.status, details.progress) == ("p", "inputs_ready", [])
    assert (details.inputs_count.files, len(q.executions().items)) == (1, 1)


def test_summary_totals_win_over_per_file_events_in_any_order(engine: Engine) -> None:
    """inputs.ready's totals are shown even when a download event is projected after it."""
    p = Projector(engine)
    p.project([f.entry(f.ready("e1", "p", 2, 20, at=5))])
    p.project([f.entry(f.downloaded("e1", "p", U, "v1", at=1))])
    p.project([f.entry(f.downloaded("e1", "p", U + "2", "v2", at=2))])
    item = Queries(engine).executions().items[0]
    assert (item.inputs.files, item.inputs.bytes, item.status) == (2, 20, "inputs_ready")
