"""A heartbeat lease per execution, so a redelivered message never runs in parallel.

Redis hands an unacknowledged message to another worker after the visibility timeout, even
while the first worker is still busy with it. Whoever runs an execution's task holds
``haul:lease:<task>:<execution>`` (a random token, short TTL, refreshed by a heartbeat).
A copy that finds a live lease raises :class:`~worker.errors.LeaseHeld` and is retried later;
when the holder dies, the heartbeat stops, the lease lapses, and the next delivery takes over.

Cost: taking a lease is one ``SET NX``; giving it back is one compare-and-delete script, which
usually rides in the pipeline of the job's final event (:meth:`Lease.board`, a
:class:`~worker.events.Rider`) instead of a round trip of its own. The heartbeats of every
lease a process holds come from one thread per process (:class:`_Heart`), started once,
instead of a thread started and joined per task.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from types import TracebackType
from typing import Any

from redis import Redis
from redis.exceptions import RedisError

from worker.constants import KEY_LEASE
from worker.errors import LeaseHeld
from worker.observability.context import in_current_context

log = logging.getLogger(__name__)

_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class _Heart:
    """One heartbeat thread for every lease this process holds.

    Each lease is extended every third of its TTL. A lease that is given back is taken off
    first, so no heartbeat of it starts afterwards; one already under way finds the token gone
    and is ignored (the lease was released, not lost).
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._cond = threading.Condition()
        #: lease -> when its next heartbeat is due (time.monotonic())
        self._due: dict[Lease, float] = {}
        self._thread: threading.Thread | None = None

    def add(self, lease: Lease) -> None:
        if self._pid != os.getpid():  # a forked child: the parent's thread is not in it
            self._reset()
        with self._cond:
            self._due[lease] = time.monotonic() + lease.interval_s
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="haul-lease", daemon=True)
                self._thread.start()
            self._cond.notify()

    def remove(self, lease: Lease) -> None:
        with self._cond:
            self._due.pop(lease, None)

    def holds(self, lease: Lease) -> bool:
        with self._cond:
            return lease in self._due

    def _run(self) -> None:
        while True:
            with self._cond:
                now = time.monotonic()
                ready = [lease for lease, at in self._due.items() if at <= now]
                for lease in ready:
                    self._due[lease] = now + lease.interval_s
                if not ready:
                    wait = min(self._due.values(), default=now + 60.0) - now
                    self._cond.wait(wait)
                    continue
            for lease in ready:
                lease.beat()


_HEART = _Heart()


class Lease:
    def __init__(self, client: Redis[bytes], name: str, ttl_s: float) -> None:
        self.client = client
        self.key = f"{KEY_LEASE}:{name}"
        self.ttl_ms = int(ttl_s * 1000)
        self.interval_s = ttl_s / 3
        self.token = uuid.uuid4().hex
        self._extend: Any = client.register_script(_EXTEND)
        self._release: Any = client.register_script(_RELEASE)
        self._released = False
        #: the heartbeat, in the context of the task that took the lease (its log lines)
        self.beat: Callable[[], None] = self._beat
        self.lost = threading.Event()

    def acquire(self) -> None:
        if not self.client.set(self.key, self.token, nx=True, px=self.ttl_ms):
            ttl = self.client.pttl(self.key)
            raise LeaseHeld(f"{self.key} is held by a live worker (expires in {ttl} ms)")
        self.beat = in_current_context(self._beat)
        _HEART.add(self)

    def _beat(self) -> None:
        try:
            extended = self._extend(keys=[self.key], args=[self.token, self.ttl_ms])
        except RedisError as exc:
            log.warning("lease heartbeat failed: %s", exc)
            return
        if not extended and _HEART.holds(self):
            _HEART.remove(self)
            log.error("lease %s was lost; another worker may take over", self.key)
            self.lost.set()

    # -------------------------------------------------------------- giving it back
    def board(self, pipe: Any) -> None:
        """Give the lease back in ``pipe`` (the job's final event's): a Rider."""
        _HEART.remove(self)
        pipe.eval(_RELEASE, 1, self.key, self.token)

    def landed(self) -> None:
        self._released = True

    def release(self) -> None:
        """Give the lease back, unless it went back with the final event already."""
        _HEART.remove(self)
        if self._released:
            return
        try:
            self._release(keys=[self.key], args=[self.token])
        except RedisError as exc:
            log.warning("lease release failed (it will lapse): %s", exc)
        self._released = True

    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
