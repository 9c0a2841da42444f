"""CloudEvents 1.0 on a capped Redis Stream (contract section 6).

Event ids are derived from the fact they describe (a UUIDv5 of the type and the fact's
identity), so a redelivered task that publishes the same fact again publishes the same id, and
consumers can de-duplicate.

Round trips: an event that need not reach the stream on its own (a file's ``stored`` or
``downloaded`` fact in the middle of a job) is *deferred*: built at once (its ``time`` is when
the fact happened) and sent in the pipeline of the next publish, in order, ahead of it. Writes
that must not cost a round trip of their own either (the lease's release, a job's last
records) ride in that same pipeline (each a :class:`Rider`). A job's final event therefore takes
everything still pending with it in one round trip (:func:`worker.pipeline.protocol.execute`).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from pydantic import BaseModel

from worker.constants import EVENT_SOURCE
from worker.models import EVENT_DATA

log = logging.getLogger(__name__)
_NAMESPACE = uuid.UUID("6f0e3f0c-5a3c-4b57-9a39-6a61c1d0e2b7")


class StreamClient(Protocol):
    def xadd(self, name: str, fields: Any, *, maxlen: int | None, approximate: bool) -> Any: ...

    def pipeline(self, transaction: bool = ...) -> Any: ...


#: (type, subject, data, identity) of one event to publish
Pending = tuple[str, "str | None", BaseModel, tuple[str, ...]]
#: deferred events are sent at the latest with the first publish or defer this long after them,
#: or once this many wait (memory stays bounded)
DEFER_MAX_S = 1.0
DEFER_MAX_ITEMS = 1000


class Rider(Protocol):
    """Writes that go out in the pipeline of an event instead of a round trip of their own."""

    def board(self, pipe: Any) -> None:
        """Queue the commands on ``pipe`` (a non-transactional pipeline)."""

    def landed(self) -> None:
        """The pipeline was executed: the commands were carried out."""


def event_id(event_type: str, *identity: str) -> str:
    """The deterministic id of one fact: the same type and identity give the same id."""
    return str(uuid.uuid5(_NAMESPACE, "\x1f".join((event_type, *identity))))


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def build_event(
    event_type: str, subject: str | None, data: BaseModel, identity: tuple[str, ...]
) -> dict[str, Any]:
    expected = EVENT_DATA[event_type]
    if not isinstance(data, expected):
        raise TypeError(f"{event_type} carries {expected.__name__}, not {type(data).__name__}")
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": event_id(event_type, *identity),
        "source": EVENT_SOURCE,
        "type": event_type,
        "time": now_iso(),
        "datacontenttype": "application/json",
        "data": data.model_dump(mode="json"),
    }
    if subject is not None:
        event["subject"] = subject
    return event


class EventPublisher:
    """Publishes events to the stream; every event also goes to the worker's log."""

    def __init__(self, client: StreamClient, stream: str, maxlen: int) -> None:
        self.client = client
        self.stream = stream
        self.maxlen = maxlen
        # A job's threads (progress reports of parallel transfers) publish too.
        self._lock = threading.Lock()
        self._deferred: list[dict[str, Any] | Rider] = []
        self._deferred_at = 0.0

    def publish(
        self,
        event_type: str,
        subject: str | None,
        data: BaseModel,
        *identity: str,
        riders: Sequence[Rider] = (),
    ) -> dict[str, Any]:
        """Publish now (with whatever was deferred, first); ``riders`` go in the same round
        trip, after the event."""
        event = build_event(event_type, subject, data, identity)
        self._send([event, *riders])
        return event

    def publish_many(self, pending: list[Pending], chunk: int = 1000) -> None:
        """Publish in order, ``chunk`` events per round trip (thousands of small files)."""
        for start in range(0, len(pending), chunk):
            self._send(_built(pending[start : start + chunk]))

    def defer(self, pending: list[Pending], riders: Sequence[Rider] = ()) -> None:
        """Publish with the next publish (or :meth:`flush`), in order: facts in the middle of
        a job that need no round trip of their own. Sent now when what waits is older than
        :data:`DEFER_MAX_S` (a long job still shows its progress) or more than
        :data:`DEFER_MAX_ITEMS`."""
        items = [*_built(pending), *riders]
        with self._lock:
            if not self._deferred:
                self._deferred_at = time.monotonic()
            self._deferred += items
            due = (
                len(self._deferred) >= DEFER_MAX_ITEMS
                or time.monotonic() - self._deferred_at >= DEFER_MAX_S
            )
        if due:
            self.flush()

    def flush(self, riders: Sequence[Rider] = ()) -> None:
        """Send what was deferred (and ``riders``); nothing when there is nothing."""
        self._send(list(riders))

    def drop_deferred(self) -> int:
        """Forget what was deferred (the job ended without publishing); how many items."""
        with self._lock:
            dropped, self._deferred = self._deferred, []
        return len(dropped)

    def _send(self, items: list[dict[str, Any] | Rider]) -> None:
        with self._lock:
            waiting, self._deferred = self._deferred, []
        items = waiting + items
        if not items:
            return
        try:
            if len(items) == 1 and isinstance(items[0], dict):
                self._add(self.client, items[0])
            else:
                pipe = self.client.pipeline(transaction=False)
                for item in items:
                    if isinstance(item, dict):
                        self._add(pipe, item)
                    else:
                        item.board(pipe)
                pipe.execute()
        except BaseException:
            # Not sent: what was deferred stays deferred (the failure event the job publishes
            # next tries again); this call's own items are the caller's to handle.
            with self._lock:
                self._deferred = waiting + self._deferred
            raise
        for item in items:
            if isinstance(item, dict):
                _logged(item)
            else:
                item.landed()

    def _add(self, client: StreamClient, event: dict[str, Any]) -> None:
        payload = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
        client.xadd(self.stream, {"event": payload}, maxlen=self.maxlen, approximate=True)


def _built(pending: list[Pending]) -> list[dict[str, Any] | Rider]:
    return [build_event(kind, subject, data, identity) for kind, subject, data, identity in pending]


def _logged(event: dict[str, Any]) -> None:
    # Not the whole event as an extra: a key named "event" is structlog's message key, so the
    # line's message became the event dict; the stream holds the event, the line points at it.
    log.info(
        "event %s %s",
        event["type"],
        event["id"],
        extra={
            "event_type": event["type"],
            "event_id": event["id"],
            "subject": event.get("subject"),
        },
    )
