"""The listing's query plans on SQLite: every filter walks an index in ``seq`` order.

At 100 000 executions a page is fast only if no filter scans the table or sorts it; a filter
whose index is missing (or a query change that defeats it) shows up here as a ``SCAN`` or a
``TEMP B-TREE`` in ``EXPLAIN QUERY PLAN``, not just as a slower benchmark. (PostgreSQL's plans
depend on table statistics; docs/dashboard.md has its ``EXPLAIN ANALYZE`` at 100 000.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from dashboard.db import make_engine, migrate
from dashboard.projector import Projector
from dashboard.queries import Queries, encode_cursor
from tests.dashboard import factory as f

U = "https://example.test/data/labels.gz"

#: filters -> what the plan must say (SQLite picks either project index for all three)
FILTERS: dict[str, tuple[dict[str, Any], str]] = {
    "first page": ({}, "SCAN executions"),  # the rowid (= seq) backwards, LIMIT 51
    "project": ({"project": "p"}, "USING INDEX ix_executions_project_seq (project_id=?)"),
    "status": ({"status": "inputs_ready"}, "USING INDEX ix_executions_status_seq"),
    "warnings": ({"warnings": True}, "USING INDEX ix_executions_warning_seq"),
    "project+status": (
        {"project": "p", "status": "inputs_ready"},
        "USING INDEX ix_executions_project_status_seq",
    ),
    "project+warnings": (
        {"project": "p", "warnings": True},
        "USING INDEX ix_executions_project_warning_seq",
    ),
    "project+status+warnings": (
        {"project": "p", "status": "inputs_ready", "warnings": True},
        "USING INDEX ix_executions_project_",
    ),
    "deep cursor": ({"cursor": encode_cursor(2)}, "USING INTEGER PRIMARY KEY (rowid<?)"),
    "project+cursor": (
        {"project": "p", "cursor": encode_cursor(2)},
        "USING INDEX ix_executions_project_seq (project_id=? AND seq<?)",
    ),
}


@pytest.mark.parametrize(("filters", "expected"), FILTERS.values(), ids=FILTERS.keys())
def test_listing_plan_uses_an_index_and_never_sorts(
    tmp_path: Path, filters: dict[str, Any], expected: str
) -> None:
    """The page query of each filter: an index (or the rowid) in order, no temporary sort."""
    engine = make_engine(f"sqlite:///{tmp_path / 'plans.sqlite3'}")
    migrate(engine)
    Projector(engine).project(
        [f.entry(f.downloaded(f"e{n}", "p", U, f"v{n}", at=n)) for n in range(3)]
    )
    seen: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cur: Any, statement: str, params: Any, *_: Any) -> None:
        if "FROM executions" in statement and "ORDER BY executions.seq DESC" in statement:
            seen.append((statement, params))

    event.listen(engine, "before_cursor_execute", capture)
    assert Queries(engine).executions(**filters).items is not None
    [(statement, params)] = seen
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute("EXPLAIN QUERY PLAN " + statement, params)
        plan = " | ".join(str(row[-1]) for row in cur.fetchall())
    finally:
        raw.close()
        engine.dispose()
    assert "TEMP B-TREE" not in plan, plan
    assert expected in plan, plan
