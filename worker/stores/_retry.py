"""Bounded retries with exponential backoff and full jitter, shared by the cloud stores.

The stores translate their SDK's exceptions first; this module only ever sees haul's own
:class:`~worker.errors.StoreError` tree and retries the ones marked ``retryable`` that are
transient (:class:`~worker.errors.TransientError`). A :class:`~worker.errors.Changed` or an
:class:`~worker.errors.IntegrityError` is *not* retried here: the whole object has to start over,
which is the transfer engine's decision. The budget is bounded twice: by attempts and by the
total seconds spent, sleeps included.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from worker.errors import TransientError

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How hard a store tries before a transient error reaches the caller."""

    attempts: int = 5
    total_s: float = 60.0
    base_delay_s: float = 0.2
    max_delay_s: float = 8.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be >= 1")
        if self.total_s <= 0 or self.base_delay_s < 0 or self.max_delay_s < self.base_delay_s:
            raise ValueError("retry delays must be positive and max_delay_s >= base_delay_s")

    def delay_s(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """Full jitter: uniform in [0, min(max, base * 2**(attempt-1))]."""
        cap = min(self.max_delay_s, self.base_delay_s * 2.0 ** (attempt - 1))
        return cap * rand()


NO_RETRY = RetryPolicy(attempts=1)


def call_with_retry(
    fn: Callable[[], T],
    policy: RetryPolicy,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """Run ``fn``; on :class:`TransientError` wait and run it again, within ``policy``."""
    started = clock()
    attempt = 1
    while True:
        try:
            return fn()
        except TransientError:
            delay = policy.delay_s(attempt)
            if attempt >= policy.attempts or clock() - started + delay > policy.total_s:
                raise
        sleep(delay)
        attempt += 1
