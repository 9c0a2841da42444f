"""Change memory, datum index and the execution lease against a real Redis."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from worker.errors import LeaseHeld
from worker.lease import Lease
from worker.records.change_memory import ChangeMemory, Seen, change_message
from worker.records.datums import content_key, datum_id, record_key


@pytest.fixture
def r(redis_srv: Any) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_srv.url.rsplit("/", 1)[0] + "/9")
    client.flushdb()
    yield client
    client.flushdb()


def _seen(sha: str, size: int, eid: str, at: str = "2026-11-26T10:00:00Z") -> Seen:
    return Seen("m" + sha, "s" + sha, sha, size, eid, at)


def test_change_memory_warns_once_per_new_content(r: redis.Redis) -> None:
    mem = ChangeMemory(r)
    assert mem.record("p", "u", _seen("a", 1, "e1")) == (None, _seen("a", 1, "e1"))
    assert mem.record("p", "u", _seen("a", 1, "e2"))[0] is None
    previous, current = mem.record("p", "u", _seen("b", 2, "e3", "2026-11-26T11:00:00Z"))
    assert previous == _seen("a", 1, "e2")
    # e3 again (a redelivery): compared with e2, not with itself; the first sighting is kept.
    again_prev, again_cur = mem.record("p", "u", _seen("b", 2, "e3", "2026-11-26T12:00:00Z"))
    assert again_prev == previous and again_cur == current
    # Other projects and URLs are remembered apart.
    assert mem.record("q", "u", _seen("z", 9, "e9"))[0] is None
    msg = change_message("u", previous, current)
    assert "e2" in msg and "a -> b" in msg and "1 B -> 2 B" in msg


def test_lease_excludes_a_second_holder_until_released(r: redis.Redis) -> None:
    first = Lease(r, "exec-1", ttl_s=5)
    first.acquire()
    with pytest.raises(LeaseHeld):
        Lease(r, "exec-1", ttl_s=5).acquire()
    first.release()
    with Lease(r, "exec-1", ttl_s=5):
        assert r.pttl("haul:lease:exec-1") > 0
    assert not r.exists("haul:lease:exec-1")


def test_lease_lapses_when_the_holder_stops_beating(r: redis.Redis) -> None:
    # A holder that died: its key has only the TTL left, nobody extends it.
    r.set("haul:lease:exec-2", "dead-token", px=50)
    lease = Lease(r, "exec-2", ttl_s=5)
    deadline = time.monotonic() + 5
    while True:
        try:
            lease.acquire()
            break
        except LeaseHeld:
            if time.monotonic() > deadline:
                pytest.fail("the lease never lapsed")
            time.sleep(0.01)
    lease.release()


def test_ids_and_keys_are_deterministic() -> None:
    sha = "ab" * 32
    assert content_key("haul", "proj-42", sha, "x.bin") == f"haul/data/proj-42/ab/{sha}/x.bin"
    assert content_key("", "p", sha, "x") == f"data/p/ab/{sha}/x"


@pytest.mark.parametrize("prefix", ["/haul/lake", "haul//lake/", "//haul///lake//"])
def test_a_prefix_never_gives_a_leading_or_double_slash(prefix: str) -> None:
    """Contract section 5's ``<store prefix>/data/...`` with the prefix as an operator may write
    it: the slashes around and inside it collapse (``haul//lake`` gave ``haul//lake/data``)."""
    sha = "ab" * 32
    assert content_key(prefix, "p", sha, "x.bin") == f"haul/lake/data/p/ab/{sha}/x.bin"
    assert record_key(prefix, "p", "d1") == "haul/lake/datums/p/d1.json"
    assert datum_id("p", "e", "a/b", sha) == datum_id("p", "e", "a/b", sha)
    assert datum_id("p", "e", "a/b", sha) != datum_id("p", "e", "a/c", sha)


def test_redelivery_after_another_execution_replays_and_disturbs_nothing(r: redis.Redis) -> None:
    mem = ChangeMemory(r)
    first = mem.record("p", "u", _seen("a", 1, "e1"))
    assert mem.record("p", "u", _seen("b", 2, "e2"))[0] == _seen("a", 1, "e1")
    # e1's message comes back after e2 ran: the same answer as the first time, no warning.
    assert mem.record("p", "u", _seen("a", 1, "e1", "2026-11-26T13:00:00Z")) == first
    # ... and e3, reading what e2 read, is compared with e2: no false warning.
    assert mem.record("p", "u", _seen("b", 2, "e3"))[0] is None


def _until(check: Any, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail("not within the deadline")
        time.sleep(0.01)


def test_one_heartbeat_thread_keeps_every_lease_and_notices_a_lost_one(r: redis.Redis) -> None:
    import threading

    a, b = Lease(r, "exec-a", ttl_s=0.3), Lease(r, "exec-b", ttl_s=0.3)
    a.acquire()
    b.acquire()
    beats = [t for t in threading.enumerate() if t.name == "haul-lease"]
    assert len(beats) == 1  # one thread for both (and for every later lease)
    # Held three TTLs long: only the heartbeat keeps the keys.
    started = time.monotonic()
    _until(lambda: time.monotonic() - started > 0.9)
    assert r.exists("haul:lease:exec-a") and r.exists("haul:lease:exec-b")
    r.set("haul:lease:exec-b", "someone-else")  # taken over
    _until(b.lost.is_set)
    assert not a.lost.is_set()
    a.release()
    b.release()  # does not delete the new holder's key
    assert not r.exists("haul:lease:exec-a")
    assert r.get("haul:lease:exec-b") == b"someone-else"


def test_a_lease_given_back_in_a_pipeline_is_not_released_twice(r: redis.Redis) -> None:
    lease = Lease(r, "exec-p", ttl_s=5)
    lease.acquire()
    pipe = r.pipeline(transaction=False)
    lease.board(pipe)
    assert r.exists("haul:lease:exec-p")  # nothing sent yet
    pipe.execute()
    lease.landed()
    assert not r.exists("haul:lease:exec-p")
    r.set("haul:lease:exec-p", "next-holder")
    lease.release()
    assert r.get("haul:lease:exec-p") == b"next-holder"
    assert not lease.lost.is_set()


def test_a_reservation_waits_while_a_purge_holds_the_content_lock(r: redis.Redis) -> None:
    import threading

    from worker.records.datums import DatumIndex

    index = DatumIndex(r)
    got: list[bool] = []

    def scripts_run() -> int:
        stats = r.info("commandstats")
        return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))

    with index.content_lock("s", "k"):
        before = scripts_run()
        waiter = threading.Thread(target=lambda: got.append(index.reserve("s", "k", "d1")))
        waiter.start()
        _until(lambda: scripts_run() >= before + 3)  # it asked, and asked again
        assert got == []
        assert not [k for k in r.keys("haul:refs:*") if not k.endswith(b":lock")]
    waiter.join(5)
    assert got == [True]
    assert [r.smembers(k) for k in r.keys("haul:refs:*")] == [{b"d1"}]


def test_deferred_events_go_out_in_order_with_the_next_publish(r: redis.Redis) -> None:
    import json

    from worker.events import EventPublisher
    from worker.models import InputSkipped

    events = EventPublisher(r, "haul:test-events", 1000)

    def skipped(n: int) -> Any:
        data = InputSkipped(execution_id="e", input=f"i{n}", url="u", reason="r")
        return ("haul.input.skipped", "e", data, ("e", f"i{n}"))

    events.defer([skipped(1), skipped(2)])
    assert r.xlen("haul:test-events") == 0  # nothing sent on its own
    lease = Lease(r, "exec-e", ttl_s=5)
    lease.acquire()
    events.publish(*skipped(3)[:3], *skipped(3)[3], riders=[lease])
    sent = [json.loads(f[b"event"])["data"]["input"] for _, f in r.xrange("haul:test-events")]
    assert sent == ["i1", "i2", "i3"]
    assert not r.exists("haul:lease:exec-e")  # released in the same round trip
    events.defer([skipped(4)])
    assert events.drop_deferred() == 1
    events.flush()
    assert r.xlen("haul:test-events") == 3
