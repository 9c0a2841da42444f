"""A heartbeat lease per execution, so a redelivered message never runs in parallel.

Redis hands an unacknowledged message to another worker after the visibility timeout, even
while the first worker is still busy with it. Whoever runs an execution's task holds
``haul:lease:<task>:<execution>`` (a random token, short TTL, refreshed by a heartbeat thread).
A copy that finds a live lease raises :class:`~worker.errors.LeaseHeld` and is retried later;
when the holder dies, the heartbeat stops, the lease lapses, and the next delivery takes over.
"""

from __future__ import annotations

import logging
import threading
import uuid
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


class Lease:
    def __init__(self, client: Redis[bytes], name: str, ttl_s: float) -> None:
        self.client = client
        self.key = f"{KEY_LEASE}:{name}"
        self.ttl_ms = int(ttl_s * 1000)
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._extend: Any = client.register_script(_EXTEND)
        self._release: Any = client.register_script(_RELEASE)
        self.lost = threading.Event()

    def acquire(self) -> None:
        if not self.client.set(self.key, self.token, nx=True, px=self.ttl_ms):
            ttl = self.client.pttl(self.key)
            raise LeaseHeld(f"{self.key} is held by a live worker (expires in {ttl} ms)")
        self._thread = threading.Thread(
            target=in_current_context(self._beat), name="haul-lease", daemon=True
        )
        self._thread.start()

    def _beat(self) -> None:
        interval = self.ttl_ms / 3000
        while not self._stop.wait(interval):
            try:
                if not self._extend(keys=[self.key], args=[self.token, self.ttl_ms]):
                    log.error("lease %s was lost; another worker may take over", self.key)
                    self.lost.set()
                    return
            except RedisError as exc:
                log.warning("lease heartbeat failed: %s", exc)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            self._release(keys=[self.key], args=[self.token])
        except RedisError as exc:
            log.warning("lease release failed (it will lapse): %s", exc)

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
