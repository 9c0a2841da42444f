"""The consumer against a real Redis: catch-up, claims, redelivery, trimming, outages."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import Engine

from dashboard.consumer import Consumer
from dashboard.db import make_engine, migrate
from dashboard.health import HealthProbe
from dashboard.projector import Projector
from dashboard.queries import Queries
from tests.dashboard import factory as f
from tests.support import servers

STREAM = "haul:events"
GROUP = "haul-web"


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    eng = make_engine(f"sqlite:///{tmp_path / 'web.sqlite3'}")
    migrate(eng)
    yield eng
    eng.dispose()


def publish(r: redis.Redis, events: list[dict[str, Any]], maxlen: int | None = None) -> None:
    for ev in events:
        r.xadd(STREAM, {"event": json.dumps(ev)}, maxlen=maxlen, approximate=False)


def consumer(r: redis.Redis, engine: Engine, name: str, **kw: Any) -> Consumer:
    return Consumer(r, Projector(engine), STREAM, GROUP, name=name, **kw)


def ready_events(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [f.ready(f"e{i:04}", "p", 1, 1, at=i) for i in range(start, start + n)]


def listed(engine: Engine) -> list[str]:
    out: list[str] = []
    cursor = None
    while True:
        page = Queries(engine).executions(limit=200, cursor=cursor)
        out += [i.execution_id for i in page.items]
        if page.next is None:
            return out
        cursor = page.next


def test_catch_up_after_restart(redis_private: Any, sqlite_engine: Engine) -> None:
    """A new consumer process (another name) continues where the group stopped, nothing twice."""
    r = redis.Redis.from_url(redis_private.url)
    publish(r, ready_events(30))
    assert consumer(r, sqlite_engine, "first").drain() == 30
    publish(r, ready_events(20, start=30))
    assert consumer(r, sqlite_engine, "second").drain() == 20
    assert sorted(listed(sqlite_engine)) == [f"e{i:04}" for i in range(50)]
    assert r.xpending(STREAM, GROUP)["pending"] == 0


def test_dead_consumers_pending_entries_are_claimed(
    redis_private: Any, sqlite_engine: Engine
) -> None:
    """Entries delivered to a consumer that died before acking are claimed and projected."""
    r = redis.Redis.from_url(redis_private.url)
    publish(r, ready_events(10))
    c = consumer(r, sqlite_engine, "live", claim_idle_ms=0)
    c.ensure_group()
    r.xreadgroup(GROUP, "dead", {STREAM: ">"}, count=4)  # taken, never acked
    assert c.drain() == 10
    assert len(listed(sqlite_engine)) == 10
    assert r.xpending(STREAM, GROUP)["pending"] == 0


def test_redelivered_events_count_once(redis_private: Any, sqlite_engine: Engine) -> None:
    """A task redelivered publishes the same ids again: new entries, counted once."""
    r = redis.Redis.from_url(redis_private.url)
    events = [f.downloaded("e1", "p", "https://h/a", "v1"), f.ready("e1", "p", 1, 10, at=1)]
    publish(r, events)
    c = consumer(r, sqlite_engine, "one")
    assert c.drain() == 2
    publish(r, events)
    assert c.drain() == 0
    item = Queries(sqlite_engine).executions().items[0]
    assert (item.inputs.files, item.inputs.bytes) == (1, 10)
    assert len(Queries(sqlite_engine).execution("e1").events) == 2


def test_trimmed_past_the_group_marks_history_incomplete(
    redis_private: Any, sqlite_engine: Engine
) -> None:
    """Trimming unread entries is detected once, with the count, and health says so."""
    r = redis.Redis.from_url(redis_private.url)
    publish(r, ready_events(5))
    c = consumer(r, sqlite_engine, "one")
    assert c.drain() == 5
    q = Queries(sqlite_engine)
    assert q.incomplete_before() is None
    publish(r, ready_events(300, start=5), maxlen=50)
    first_left = r.xrange(STREAM, count=1)[0][0].decode()
    assert c.drain() == 50
    gap = q.incomplete_before()
    assert gap is not None
    millis = int(first_left.split("-")[0])
    assert gap.startswith(time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(millis / 1000)))
    with sqlite_engine.connect() as conn:
        lost = conn.exec_driver_sql("SELECT lost_events FROM stream_gaps").scalars().all()
    assert lost == [250]
    health = HealthProbe(r, STREAM, GROUP, q).health()
    assert health.status == "incomplete" and health.incomplete_before == gap
    assert health.lag_events == 0
    publish(r, ready_events(10, start=400), maxlen=50)
    assert c.drain() == 10
    with sqlite_engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM stream_gaps").scalar() == 1
    assert q.executions().incomplete_before == gap


def test_new_group_on_a_trimmed_stream(redis_private: Any, sqlite_engine: Engine) -> None:
    """A dashboard started after the stream lost its oldest entries says so."""
    r = redis.Redis.from_url(redis_private.url)
    publish(r, ready_events(120), maxlen=100)
    assert consumer(r, sqlite_engine, "late").drain() == 100
    with sqlite_engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT lost_events FROM stream_gaps").scalar() == 20


def test_waits_out_a_redis_outage(tmp_path: Path, sqlite_engine: Engine) -> None:
    """Redis restarts (AOF on): the running consumer reconnects and projects new events."""
    with servers.redis_server(tmp_path / "redis", appendonly=True) as srv:
        r = redis.Redis.from_url(srv.url, socket_timeout=2)
        publish(r, ready_events(5))
        c = Consumer(
            redis.Redis.from_url(srv.url, socket_timeout=2),
            Projector(sqlite_engine), STREAM, GROUP, name="steady", block_ms=200,
        )  # fmt: skip
        stop = threading.Event()
        thread = threading.Thread(target=c.run, args=(stop,), daemon=True)
        thread.start()
        try:
            _until(lambda: len(listed(sqlite_engine)) == 5)
            srv.stop()
            _until(lambda: not c.redis_ok)
            srv.start()
            publish(r, ready_events(5, start=5))
            _until(lambda: len(listed(sqlite_engine)) == 10)
            _until(lambda: c.redis_ok)
        finally:
            stop.set()
            thread.join(10)


def _until(check: Any, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def test_two_replicas_on_postgresql_count_every_event_once(redis_private: Any, pg_url: str) -> None:
    """Two consumers of one group on one PostgreSQL, every event published twice: each
    execution's counts are exact and every event is in the timeline once."""
    from tests.dashboard.conftest import reset_pg

    reset_pg(pg_url)
    engine = make_engine(pg_url)
    migrate(engine)
    migrate(engine)  # a second replica starting: nothing to do
    r = redis.Redis.from_url(redis_private.url)
    events = []
    for i in range(40):
        ex = f"e{i:03}"
        events += [
            f.downloaded(ex, "p", "https://h/a", "v1", at=i),
            f.downloaded(ex, "p", "https://h/b", "v2", at=i),
            f.ready(ex, "p", 2, 20, at=i + 0.5),
        ]
    publish(r, events + events)
    replicas = [consumer(r, engine, f"replica-{n}", batch=7) for n in range(2)]
    for c in replicas:
        c.ensure_group()
    threads = [threading.Thread(target=c.drain) for c in replicas]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sum(c.projected for c in replicas) == len(events)
    assert all(c.projected > 0 for c in replicas)
    items = Queries(engine).executions(limit=200).items
    assert len(items) == 40
    assert {(i.inputs.files, i.inputs.bytes, i.status) for i in items} == {(2, 20, "inputs_ready")}
    engine.dispose()


def test_a_handler_defect_skips_only_its_event(
    redis_private: Any, sqlite_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One event its handler fails on (a defect, not an outage) is kept as unusable with what
    went wrong; the events around it, in the same batch, are projected, and the consumer goes on
    with the next batch."""
    r = redis.Redis.from_url(redis_private.url)
    projector = Projector(sqlite_engine)
    handler = projector._project

    def failing_on_e0003(conn: Any, entries: Any) -> int:
        if any(getattr(e, "subject", None) == "e0003" for e in entries):
            raise KeyError("a defect")
        return handler(conn, entries)

    monkeypatch.setattr(projector, "_project", failing_on_e0003)
    publish(r, ready_events(8))
    c = Consumer(r, projector, STREAM, GROUP, name="one")
    assert c.drain() == 7
    assert c.failed == 1
    assert "e0003" not in listed(sqlite_engine) and len(listed(sqlite_engine)) == 7
    with sqlite_engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT problem, payload FROM bad_events").all()
    assert len(rows) == 1
    assert rows[0][0] == "could not be projected: KeyError: 'a defect'"
    assert '"e0003"' in rows[0][1]
    assert r.xpending(STREAM, GROUP)["pending"] == 0
    publish(r, ready_events(3, start=8))
    assert c.drain() == 3


def test_the_consumer_thread_outlives_an_unexpected_error(
    redis_private: Any, sqlite_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error outside any handler (here: in reading) is logged and retried; the thread lives
    and projects what comes after."""
    r = redis.Redis.from_url(redis_private.url)
    c = consumer(r, sqlite_engine, "live", block_ms=50)
    real = c._read_new
    failures = iter([RuntimeError("once")])

    def flaky() -> Any:
        exc = next(failures, None)
        if exc is not None:
            raise exc
        return real()

    monkeypatch.setattr(c, "_read_new", flaky)
    stop = threading.Event()
    thread = threading.Thread(target=c.run, args=(stop,), daemon=True)
    thread.start()
    try:
        publish(r, ready_events(5))
        deadline = time.monotonic() + 20
        while c.projected < 5:
            assert thread.is_alive()
            assert time.monotonic() < deadline, "not projected within the deadline"
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(10)
    assert sorted(listed(sqlite_engine)) == [f"e{i:04}" for i in range(5)]
