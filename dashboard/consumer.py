"""The events stream into the projector: one consumer of the group ``web_consumer_group``.

Every step reads a batch with ``XREADGROUP`` inside one ``MULTI`` together with
``XINFO STREAM`` and ``XINFO GROUPS``, so the check "did the stream lose entries this group
never read?" sees exactly the state the read starts from. The entries are acknowledged only
after the projector's transaction committed; a batch that could not be written stays pending
and is read again from this consumer's pending list. Entries a dead replica had taken are
claimed with ``XAUTOCLAIM`` once they have been idle ``claim_idle_ms``.

Trimming (``XADD ... MAXLEN ~``) removes the oldest entries. Redis numbers entries
logically (``entries-added``), and a group counts what it read (``entries-read``), but Redis
only increments that count after a trim: it never learns the group skipped entries. So when
the group's position is older than the first entry left, the entries lost are
``entries-added - length - entries-read``; they are recorded as a gap ("history before
<first entry's time> is incomplete") and the group's count is corrected with
``XGROUP SETID ... ENTRIESREAD`` so the same loss is not counted again and Redis's ``lag``
is right again.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from redis import Redis
from redis.exceptions import RedisError, ResponseError
from sqlalchemy.exc import SQLAlchemyError

from dashboard.parse import BadEntry, Event, parse_entry
from dashboard.projector import Projector

log = logging.getLogger(__name__)

Entries = list[tuple[str, dict[str, str]]]
_MAX_BACKOFF_S = 5.0
#: entries per XREADGROUP, and so per projector transaction. Measured on SQLite at 30 000
#: executions: 500 -> 2 000 took the projector from 12 900 to 15 300 events/s (fewer commits,
#: pages shared by more rows per commit); 5 000 gave 17 800 but holds more per batch in memory
#: and in the pending list. With no backlog a read returns what there is, so it adds no delay.
BATCH = 2000
#: of an event a handler failed on, kept for a person to read (as parse.py keeps bad entries)
_MAX_KEPT_CHARS = 2000


def consumer_name() -> str:
    """Unique per process: a restarted replica leaves its old pending entries to be claimed."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def stream_id_time(stream_id: str) -> datetime:
    millis = int(stream_id.split("-", 1)[0])
    return datetime.fromtimestamp(millis / 1000, UTC).replace(tzinfo=None)


def _id_key(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass
class StreamState:
    """The stream and this group as one ``MULTI`` saw them."""

    added: int
    length: int
    first_id: str | None
    last_generated_id: str
    delivered_id: str
    entries_read: int | None
    lag: int | None
    pending: int


class Consumer:
    def __init__(
        self,
        client: Redis,  # type: ignore[type-arg]
        projector: Projector,
        stream: str,
        group: str,
        name: str | None = None,
        batch: int = BATCH,
        block_ms: int = 1000,
        claim_idle_ms: int = 60_000,
    ) -> None:
        self.client = client
        self.projector = projector
        self.stream = stream
        self.group = group
        self.name = name or consumer_name()
        self.batch = batch
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self._recheck_own = True  # after a start or a failed write: our own pending first
        self.redis_ok = False
        self.projected = 0
        #: events a handler failed on (kept with the unusable entries)
        self.failed = 0

    # ---------------------------------------------------------------- setup

    def ensure_group(self) -> None:
        try:
            self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    # ---------------------------------------------------------------- loop

    def run(self, stop: threading.Event) -> None:
        """Consume until ``stop`` is set; Redis or database outages are waited out."""
        backoff = 0.2
        while not stop.is_set():
            try:
                self.step()
                self.redis_ok = True
                backoff = 0.2
            except RedisError as exc:
                self.redis_ok = False
                log.warning("events stream unavailable (%s); retrying", type(exc).__name__)
                stop.wait(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF_S)
            except SQLAlchemyError as exc:
                self._recheck_own = True
                log.warning("read model write failed (%s); retrying", type(exc).__name__)
                stop.wait(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF_S)
            except Exception:
                # Never end the thread: nothing would restart it, and every page would go
                # stale while the process looked healthy.
                self._recheck_own = True
                log.exception("events consumer step failed; retrying")
                stop.wait(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF_S)

    def step(self) -> int:
        """One round: own pending, claimed entries, then new ones. Return events projected."""
        self.ensure_group()
        done = 0
        if self._recheck_own:
            done += self._own_pending()
            self._recheck_own = False
        done += self._claim()
        state, entries = self._read_new()
        if not entries:
            self._wait_for_new(state.last_generated_id)
            return done
        return done + self._handle(entries)

    def drain(self) -> int:
        """Project everything the group has not read yet (tests and the benchmark)."""
        total = 0
        while True:
            self.ensure_group()
            total += self._own_pending() + self._claim()
            _state, entries = self._read_new()
            if not entries:
                return total
            total += self._handle(entries)

    # ---------------------------------------------------------------- reading

    def state(self) -> StreamState:
        pipe = self.client.pipeline(transaction=True)
        pipe.xinfo_stream(self.stream)
        pipe.xinfo_groups(self.stream)
        info, groups = pipe.execute()
        return self._state(info, groups)

    def _read_new(self) -> tuple[StreamState, Entries]:
        pipe = self.client.pipeline(transaction=True)
        pipe.xinfo_stream(self.stream)
        pipe.xinfo_groups(self.stream)
        pipe.xreadgroup(self.group, self.name, {self.stream: ">"}, count=self.batch)
        info, groups, reply = pipe.execute()
        state = self._state(info, groups)
        self._check_gap(state)
        return state, _entries(reply)

    def _state(self, info: dict[str, Any], groups: list[dict[str, Any]]) -> StreamState:
        group = next(g for g in groups if _text(g["name"]) == self.group)
        first = info.get("first-entry")
        return StreamState(
            added=int(info.get("entries-added", info["length"])),
            length=int(info["length"]),
            first_id=_text(first[0]) if first else None,
            last_generated_id=_text(info["last-generated-id"]),
            delivered_id=_text(group["last-delivered-id"]),
            entries_read=group.get("entries-read"),
            lag=group.get("lag"),
            pending=int(group["pending"]),
        )

    def _check_gap(self, s: StreamState) -> None:
        edge = s.first_id or s.last_generated_id
        if _id_key(s.delivered_id) >= _id_key(edge) and s.first_id is not None:
            return  # the group's position is inside the stream: nothing it needs is gone
        read = s.entries_read or 0
        lost = s.added - s.length - read
        if lost <= 0:
            return
        before = stream_id_time(edge)
        log.warning(
            "the events stream was trimmed past %d events this dashboard never read; "
            "history before %s is incomplete",
            lost,
            before.isoformat(),
        )
        self.projector.record_gap(before, lost)
        self.client.execute_command(
            "XGROUP", "SETID", self.stream, self.group, s.delivered_id, "ENTRIESREAD",
            s.added - s.length,
        )  # fmt: skip

    def _wait_for_new(self, after_id: str) -> None:
        """Block (plain XREAD, no group) until an entry newer than ``after_id`` exists."""
        self.client.xread({self.stream: after_id}, count=1, block=self.block_ms)

    def _own_pending(self) -> int:
        done = 0
        start = "0"
        while True:
            reply = self.client.xreadgroup(
                self.group, self.name, {self.stream: start}, count=self.batch
            )
            entries = _entries(reply)
            if not entries:
                return done
            done += self._handle(entries)
            start = entries[-1][0]

    def _claim(self) -> int:
        done = 0
        start = "0-0"
        while True:
            reply = self.client.xautoclaim(
                self.stream, self.group, self.name, self.claim_idle_ms, start, count=self.batch
            )
            start = _text(reply[0])
            entries = [(_text(i), _fields(f)) for i, f in reply[1] if f is not None]
            if len(reply) > 2 and reply[2]:
                self._lost_pending([_text(i) for i in reply[2]])
            if entries:
                done += self._handle(entries)
            if start == "0-0":
                return done

    def _lost_pending(self, ids: list[str]) -> None:
        """Entries delivered but trimmed before anyone acknowledged them."""
        newest = max(ids, key=_id_key)
        log.warning("%d pending events were trimmed before they were projected", len(ids))
        ms = newest.partition("-")[0]
        self.projector.record_gap(stream_id_time(f"{int(ms) + 1}-0"), len(ids))

    # ---------------------------------------------------------------- projecting

    def _handle(self, entries: Entries) -> int:
        trimmed = [i for i, f in entries if not f]
        usable = [(i, f) for i, f in entries if f]
        if trimmed:
            self._lost_pending(trimmed)
        parsed: list[Event | BadEntry] = [parse_entry(i, f) for i, f in usable]
        for p in parsed:
            if isinstance(p, BadEntry):
                log.warning("stream entry %s is not a usable event: %s", p.stream_id, p.problem)
        try:
            fresh = self.projector.project(parsed)
        except (RedisError, SQLAlchemyError):
            raise  # an outage: the batch stays pending and is read again
        except Exception as exc:
            # A defect in one handler must not stop the read model for every later event:
            # the batch (rolled back) is projected again one event at a time, and the events
            # that still fail are kept with the unusable entries, with what went wrong.
            log.warning("a batch failed to project; one event at a time", exc_info=exc)
            fresh = self._one_by_one(parsed, dict(usable))
        self.client.xack(self.stream, self.group, *[i for i, _ in entries])  # type: ignore[no-untyped-call]
        self.projected += fresh
        return fresh

    def _one_by_one(self, parsed: list[Event | BadEntry], raw: dict[str, dict[str, str]]) -> int:
        fresh = 0
        for p in parsed:
            try:
                fresh += self.projector.project([p])
            except (RedisError, SQLAlchemyError):
                raise
            except Exception as exc:
                self.failed += 1
                log.exception("event %s could not be projected; kept as unusable", p.stream_id)
                problem = f"could not be projected: {type(exc).__name__}: {exc}"[:500]
                payload = raw.get(p.stream_id, {}).get("event", "")[:_MAX_KEPT_CHARS]
                self.projector.project([BadEntry(p.stream_id, problem, payload)])
        return fresh


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _fields(raw: Any) -> dict[str, str]:
    if not raw:
        return {}
    return {_text(k): _text(v) for k, v in raw.items()}


def _entries(reply: Any) -> Entries:
    out: Entries = []
    for _stream, items in reply or []:
        out.extend((_text(i), _fields(f)) for i, f in items)
    return out
