"""CloudEvents 1.0 on a capped Redis Stream (contract section 6).

Event ids are derived from the fact they describe (a UUIDv5 of the type and the fact's
identity), so a redelivered task that publishes the same fact again publishes the same id, and
consumers can de-duplicate.
"""

from __future__ import annotations

import json
import logging
import uuid
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

    def publish(
        self, event_type: str, subject: str | None, data: BaseModel, *identity: str
    ) -> dict[str, Any]:
        event = build_event(event_type, subject, data, identity)
        self._add(self.client, event)
        _logged(event)
        return event

    def publish_many(self, pending: list[Pending], chunk: int = 1000) -> None:
        """Publish in order, ``chunk`` events per round trip (thousands of small files)."""
        for start in range(0, len(pending), chunk):
            pipe = self.client.pipeline(transaction=False)
            built = [
                build_event(event_type, subject, data, identity)
                for event_type, subject, data, identity in pending[start : start + chunk]
            ]
            for event in built:
                self._add(pipe, event)
            pipe.execute()
            for event in built:
                _logged(event)

    def _add(self, client: StreamClient, event: dict[str, Any]) -> None:
        payload = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
        client.xadd(self.stream, {"event": payload}, maxlen=self.maxlen, approximate=True)


def _logged(event: dict[str, Any]) -> None:
    log.info("event %s %s", event["type"], event["id"], extra={"event": event})
