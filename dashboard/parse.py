"""Stream entries to typed events, validated with the worker's own event-data models.

A field this dashboard does not know (a newer worker) is dropped rather than refusing the
event; anything else that does not fit the contract is a :class:`BadEntry` with the reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ValidationError

from worker.models import EVENT_DATA

_MAX_PAYLOAD_CHARS = 2000


@dataclass(frozen=True, slots=True)
class Event:
    stream_id: str
    id: str
    type: str
    time: datetime  # naive UTC
    subject: str | None
    data: BaseModel


@dataclass(frozen=True, slots=True)
class BadEntry:
    stream_id: str
    problem: str
    payload: str


def parse_time(text: str) -> datetime:
    """An RFC 3339 time as naive UTC (what the database columns hold)."""
    value = datetime.fromisoformat(text)
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value


def parse_entry(stream_id: str, fields: dict[str, str]) -> Event | BadEntry:
    raw = fields.get("event")
    if raw is None:
        return BadEntry(stream_id, "the entry has no 'event' field", json.dumps(fields)[:2000])
    try:
        return _parse(stream_id, raw)
    except (ValueError, TypeError, KeyError) as exc:
        return BadEntry(stream_id, _short(exc), raw[:_MAX_PAYLOAD_CHARS])


def _parse(stream_id: str, raw: str) -> Event:
    obj = json.loads(raw)
    if not isinstance(obj, dict):
        raise TypeError("the event is not a JSON object")
    event_type = obj["type"]
    model = EVENT_DATA.get(event_type)
    if model is None:
        raise ValueError(f"unknown event type {str(event_type)[:100]!r}")
    event_id = obj["id"]
    if not isinstance(event_id, str) or not 0 < len(event_id) <= 200:
        raise ValueError("the event id is not a string of 1 to 200 characters")
    subject = obj.get("subject")
    if subject is not None and (not isinstance(subject, str) or len(subject) > 200):
        raise ValueError("the subject is not a string of at most 200 characters")
    return Event(
        stream_id=stream_id,
        id=event_id,
        type=event_type,
        time=parse_time(str(obj["time"])),
        subject=subject,
        data=_validate(model, obj.get("data")),
    )


def _validate(model: type[BaseModel], data: Any) -> BaseModel:
    if not isinstance(data, dict):
        raise TypeError("the event's data is not a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError:
        known = {k: v for k, v in data.items() if k in model.model_fields}
        if known == data:
            raise
        return model.model_validate(known)


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}"
