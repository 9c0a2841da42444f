"""How the CLI talks to haul's services: Redis (the events stream) and Celery (sending only).

Each client is built from the settings handed down by the entry point; Celery and redis are
imported on first use, so commands that need neither start fast.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celery import Celery
    from redis import Redis

    from worker.settings import Settings

Event = dict[str, Any]


def redis_client(settings: Settings) -> Redis[bytes]:
    from redis import Redis

    return Redis.from_url(settings.redis_url, socket_connect_timeout=5)


def shown_redis(settings: Settings) -> str:
    """``redis_url`` as it may be shown: without its password."""
    from worker.urls import redact_url

    return redact_url(settings.redis_url)


def celery_client(settings: Settings) -> Celery:
    """A Celery app that only sends: the worker's own configuration, built from ``settings``."""
    from celery import Celery

    from tasks.config import celery_config

    app = Celery("haul-cli", set_as_current=False)
    app.conf.update(celery_config(settings))
    return app


def send(
    app: Celery, task: str, message: dict[str, Any], queue: str, task_id: str | None = None
) -> Any:
    """Enqueue ``message`` for ``task`` on ``queue`` (each haul queue has its own exchange).

    The exchange and routing key are given too: otherwise the app's ``task_routes`` would
    route to the task's default queue whatever ``queue`` says. ``task_id`` sends a message
    again under its first id (worker/delivery.py).
    """
    return app.send_task(
        task, args=[message], queue=queue, exchange=queue, routing_key=queue, task_id=task_id
    )


# ============================================================================ the events stream


def _decode(fields: dict[bytes, bytes]) -> Event | None:
    raw = fields.get(b"event")
    if raw is None:
        return None
    try:
        event = json.loads(raw)
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


def last_stream_id(client: Redis[bytes], stream: str) -> str:
    """The id of the newest entry (``0-0`` for an empty stream): read after it to miss nothing."""
    newest = client.xrevrange(stream, count=1)
    return newest[0][0].decode() if newest else "0-0"


def read_events(
    client: Redis[bytes], stream: str, after: str, block_ms: int
) -> tuple[str, list[Event]]:
    """Entries after ``after`` (XREAD BLOCK ``block_ms``); returns the new cursor and events."""
    reply = client.xread({stream: after}, block=block_ms, count=500)
    events: list[Event] = []
    for _name, entries in reply or []:
        for entry_id, fields in entries:
            after = entry_id.decode()
            event = _decode(fields)
            if event is not None:
                events.append(event)
    return after, events


def recent_events(
    client: Redis[bytes], stream: str, count: int, keep: Callable[[Event], bool]
) -> tuple[str, list[Event]]:
    """The newest ``count`` matching events, oldest first, and the stream's newest id."""
    newest = last_stream_id(client, stream)
    found: list[Event] = []
    upper = "+"
    while len(found) < count:
        page = client.xrevrange(stream, max=upper, count=500)
        if not page:
            break
        for _entry_id, fields in page:
            event = _decode(fields)
            if event is not None and keep(event):
                found.append(event)
                if len(found) == count:
                    break
        ms, seq = page[-1][0].decode().split("-")
        if int(seq) > 0:
            upper = f"{ms}-{int(seq) - 1}"
        elif int(ms) > 0:
            upper = f"{int(ms) - 1}-18446744073709551615"
        else:
            break
    found.reverse()
    return newest, found
