"""Has a message sent to haul over a Redis broker reached a worker, or was it lost on the way?

kombu's Redis transport delivers with ``BRPOP``: the pop removes the message from its queue
list, and only the consumer's next command writes it to the ``unacked`` hash, from which
kombu hands it to another worker after the visibility timeout. A worker's main process killed
between the two (or one whose connection Redis has not yet seen closed when it pops) takes the
message with it: nothing in Redis names it any more, and ``acks_late`` cannot help. bench/chaos
found this (one execution of 120 lost in the first full run; see docs/operating.md).

Nothing on the worker side can notice a message that no worker recorded, so the sender checks:
:class:`DeliveryCheck` looks, in the order a message moves, for it in its queue's lists, in
``unacked``, and for its task's state in the result backend (``task_track_started``); a message
found nowhere in two looks at least ``confirm_s`` apart is lost, and :meth:`DeliveryCheck.
resend_if_lost` sends it again under the same task id. A copy too many is harmless: the
execution's lease keeps two copies from running at once, the finished records make the second a
replay, and event ids are deterministic. On RabbitMQ (publisher confirms, quorum queues, a
message returns when its consumer's connection closes) there is no such window and the check
answers ``unknown``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from redis import Redis

Where = Literal["queued", "unacked", "started", "nowhere", "unknown"]

#: kombu's defaults (haul does not change them): the hash of unacknowledged messages, and the
#: separator between a queue's name and its priority step in the names of its lists
UNACKED_KEY = "unacked"
PRIORITY_SEP = "\x06\x16"
#: kombu's default priority steps: a queue's messages of priority step ``n`` > 0 are in the list
#: ``<queue><PRIORITY_SEP><n>``
PRIORITY_STEPS = (0, 3, 6, 9)
#: two looks this far apart that both find a message nowhere: it is lost (the window in which a
#: live consumer holds a popped message before recording it lasts milliseconds)
CONFIRM_S = 3.0


@dataclass
class Sent:
    """One message as its sender knows it: enough to find it and to send it again."""

    task: str
    task_id: str
    queue: str
    message: dict[str, Any]
    #: when it was last found nowhere (time.monotonic()), or None
    missing_since: float | None = None
    resends: int = 0


@dataclass
class DeliveryCheck:
    """Finds messages on a Redis broker; ``broker`` is None for RabbitMQ (``unknown``)."""

    broker: Redis[bytes] | None
    results: Redis[bytes]
    confirm_s: float = CONFIRM_S
    clock: Callable[[], float] = time.monotonic
    resent: list[str] = field(default_factory=list)

    def where(self, task_id: str, queue: str) -> Where:
        """Looks in the order a message moves (queue list, ``unacked``, a task state), so one
        that moves during the look is found at its next place rather than missed."""
        if self.broker is None:
            return "unknown"
        needle = task_id.encode()
        return (
            "queued"
            if self._queued(needle, queue)
            else "unacked"
            if any(needle in raw for raw in self.broker.hvals(UNACKED_KEY))
            else "started"
            if self._state(task_id) is not None
            else "nowhere"
        )

    def _queued(self, needle: bytes, queue: str) -> bool:
        assert self.broker is not None
        # only the sent queue's own lists: a scan of the keyspace would cost as much as the
        # datum index and the change memory hold
        for step in PRIORITY_STEPS:
            key = f"{queue}{PRIORITY_SEP}{step}" if step else queue
            # a queue of many messages is read in pages: the check costs one pass over it
            for start in range(0, self.broker.llen(key), 1000):
                if any(needle in item for item in self.broker.lrange(key, start, start + 999)):
                    return True
        return False

    def _state(self, task_id: str) -> str | None:
        raw = self.results.get(f"celery-task-meta-{task_id}")
        if raw is None:
            return None
        status = json.loads(raw).get("status")
        return str(status) if status else None

    def resend_if_lost(self, sent: Sent, send: Callable[[Sent], None]) -> bool:
        """Send ``sent`` again (``send``) once two looks ``confirm_s`` apart found it nowhere;
        True when it did."""
        if self.where(sent.task_id, sent.queue) != "nowhere":
            sent.missing_since = None
            return False
        now = self.clock()
        if sent.missing_since is None:
            sent.missing_since = now
            return False
        if now - sent.missing_since < self.confirm_s:
            return False
        send(sent)
        sent.resends += 1
        sent.missing_since = None
        self.resent.append(sent.task_id)
        return True
