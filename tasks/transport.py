"""kombu's Redis transport with one guard: a channel whose connection is closed never reconnects.

Celery 5.7's consumer, on losing the broker (bench/chaos: a Redis restart), first calls
``connection.collect()``, which detaches the transport (``transport.client = None``), and then
``connection.close()``, which closes the default channel again. If the first close could not
restore the unacknowledged messages (Redis still down), the second one tries again, builds a new
connection pool from ``self.connection.client`` and fails with ``AttributeError: 'NoneType'
object has no attribute 'hostname'`` in ``Channel._connparams``. That is neither a connection nor
a channel error, so it escapes ``ignore_errors`` and the worker's main process exits
("Unrecoverable error"; seen in bench/chaos with kombu 5.7.0, celery 5.7.0, redis-py 8.1.0, the
newest releases; celery/kombu#582 is the same crash from another caller).

Here such a channel raises redis-py's ``ConnectionError`` instead, which kombu counts as a
connection error: the close goes on, the consumer reconnects, and the messages it could not
restore stay in kombu's ``unacked`` hash, from which the visibility-timeout restore hands them
out again. :func:`install` wraps ``Channel._connparams`` of kombu's Redis transport (the
Sentinel channel inherits it); ``create_app`` calls it. It is a wrap of kombu's own class, not a
transport of haul's: a transport of another name would change the broker URL Celery prints
(and that the log redaction knows). Remove it once kombu or Celery no longer closes a detached
channel.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import redis
from kombu.transport import redis as kombu_redis

_Connparams = Callable[..., dict[str, Any]]


def _guarded(connparams: _Connparams) -> _Connparams:
    @functools.wraps(connparams)
    def _connparams(self: Any, asynchronous: bool = False) -> dict[str, Any]:
        transport = self.connection
        if transport is None or transport.client is None:
            raise redis.ConnectionError("the broker connection of this channel is closed")
        return connparams(self, asynchronous=asynchronous)

    _connparams.haul_guarded = True  # type: ignore[attr-defined]
    return _connparams


def install() -> None:
    """Guard kombu's Redis channels (idempotent)."""
    channel = kombu_redis.Channel
    if not getattr(channel._connparams, "haul_guarded", False):
        channel._connparams = _guarded(channel._connparams)  # type: ignore[method-assign]
