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
from worker.records.datums import content_key, datum_id


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
