"""Backoff with full jitter inside a bounded number of attempts."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

from worker.errors import HaulError

T = TypeVar("T")


def backoff_s(attempt: int, base_s: float, max_s: float) -> float:
    """Full jitter: uniform in [0, min(max, base * 2**attempt)]."""
    return random.uniform(0, min(max_s, base_s * (2**attempt)))


def retrying(
    fn: Callable[[], T],
    *,
    attempts: int,
    base_s: float = 0.2,
    max_s: float = 10.0,
    on_retry: Callable[[HaulError, int], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``fn``; retry errors marked ``retryable`` up to ``attempts`` times in all."""
    for attempt in range(attempts):
        try:
            return fn()
        except HaulError as exc:
            if not exc.retryable or attempt == attempts - 1:
                raise
            if on_retry is not None:
                on_retry(exc, attempt + 1)
            sleep(backoff_s(attempt, base_s, max_s))
    raise AssertionError("unreachable")
