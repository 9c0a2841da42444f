"""The one retry policy of haul: attempts, a time budget, full jitter, ``Retry-After``.

Stores and HTTP sources make one attempt per call and translate what went wrong into haul's
errors (:mod:`worker.errors`); whether and when to try again is decided here only, by the
engine's call sites (download stat and first range, each chunk range, the object restarts,
upload create, listings, datum records) through :meth:`RetryPolicy.call`. Before this module a
store retried inside each call while the engine retried the same call again: a store answering
503 forever cost up to 25 requests and about five minutes per file.

A call is tried at most ``max_attempts`` times in all. Between two attempts the policy waits
a full-jitter backoff, ``uniform(0, min(max_backoff_s, base_s * 2**retry))``, or longer when the
error carries the server's own wish (:attr:`TransientError.retry_after_s`, from ``Retry-After``
or a throttling answer). No wait may end past ``budget_s`` after the call's first attempt: when
it would, the call fails at once with its last error, rather than sleeping only to fail later.
An ``allowance`` shared by several calls caps their retries together (the chunks of one
object). Clock, sleep and jitter are injectable, so tests need no real waiting.

Every retry is counted per store type (``local``, ``s3``, ``azure``, ``gcs``, ``swift``,
``http``): :func:`retry_counts` reads the counts of this process and :func:`add_retry_listener`
registers a callback (the worker's metrics).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from worker.errors import HaulError

log = logging.getLogger(__name__)
T = TypeVar("T")

#: ``sleep(seconds, cancel)`` waits, or less once ``cancel`` is set; True when it was cancelled
Sleep = Callable[[float, "threading.Event | None"], bool]
#: ``listener(store_type, error)``, called once for every retry
RetryListener = Callable[[str, HaulError], None]

STORE_TYPES = ("local", "s3", "azure", "gcs", "swift", "http")


class RetryCancelled(Exception):
    """The wait before a retry was cut short by its ``cancel`` event (the work was stopped)."""


def _sleep(seconds: float, cancel: threading.Event | None) -> bool:
    if cancel is None:
        time.sleep(seconds)
        return False
    return cancel.wait(seconds)


def _retryable(exc: HaulError) -> bool:
    return exc.retryable


class Allowance:
    """Retries left for a group of calls (the chunks of one object), whatever their number."""

    def __init__(self, retries: int) -> None:
        self.left = retries
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self.left <= 0:
                return False
            self.left -= 1
            return True


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long a failed call is tried again (validated once, at start)."""

    max_attempts: int = 5
    #: no retry waits past this long after the call's first attempt
    budget_s: float = 60.0
    base_s: float = 0.2
    max_backoff_s: float = 10.0
    clock: Callable[[], float] = field(default=time.monotonic, compare=False)
    sleep: Sleep = field(default=_sleep, compare=False)
    jitter: Callable[[float, float], float] = field(default=random.uniform, compare=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if self.budget_s <= 0 or self.base_s < 0 or self.max_backoff_s < 0:
            raise ValueError("budget_s must be > 0, base_s and max_backoff_s >= 0")

    def backoff_s(self, retry: int) -> float:
        """Full jitter before retry number ``retry`` (0 for the first retry)."""
        return self.jitter(0.0, min(self.max_backoff_s, self.base_s * (2**retry)))

    def delay_s(self, retry: int, exc: HaulError) -> float:
        """The wait before retry ``retry`` after ``exc``: the backoff, or the server's wish."""
        wanted = getattr(exc, "retry_after_s", None)
        backoff = self.backoff_s(retry)
        return max(backoff, float(wanted)) if wanted is not None else backoff

    def call(
        self,
        fn: Callable[[], T],
        *,
        store_type: str,
        what: str,
        retry_if: Callable[[HaulError], bool] = _retryable,
        allowance: Allowance | None = None,
        cancel: threading.Event | None = None,
        budget_s: float | None = None,
        message: str = "retrying {what} (attempt {attempt})",
    ) -> T:
        """``fn()``, tried again on a haul error that ``retry_if`` accepts (by default one
        marked ``retryable``) within the attempts, the budget and the ``allowance``.

        Raises the last error when no retry is left; :class:`RetryCancelled` when ``cancel``
        is set during a wait. ``budget_s`` replaces the policy's budget for this call;
        ``message`` is the log line of a retry (``{what}`` and ``{attempt}``, the next one).
        """
        budget = self.budget_s if budget_s is None else budget_s
        started = self.clock()
        for attempt in range(1, self.max_attempts + 1):
            try:
                return fn()
            except HaulError as exc:
                if attempt == self.max_attempts or not retry_if(exc):
                    raise
                delay = self.delay_s(attempt - 1, exc)
                if self.clock() - started + delay > budget:
                    log.info("%s: no retry, the %g s budget would be spent: %s", what, budget, exc)
                    raise
                if allowance is not None and not allowance.take():
                    raise
                _count(store_type, exc)
                shown = message.format(what=what, attempt=attempt + 1)
                log.info("%s in %.2f s: %s", shown, delay, exc)
                if self.sleep(delay, cancel):
                    raise RetryCancelled(what) from None
        raise AssertionError("unreachable")


# ============================================================================ retry counts

_counts: Counter[str] = Counter()
_listeners: list[RetryListener] = []
_lock = threading.Lock()


def _count(store_type: str, exc: HaulError) -> None:
    with _lock:
        _counts[store_type] += 1
        listeners = list(_listeners)
    for listener in listeners:
        listener(store_type, exc)


def retry_counts() -> dict[str, int]:
    """Retries made in this process so far, by store type."""
    with _lock:
        return dict(_counts)


def add_retry_listener(listener: RetryListener) -> None:
    """Call ``listener(store_type, error)`` on every retry from now on (e.g. a metric)."""
    with _lock:
        _listeners.append(listener)


def remove_retry_listener(listener: RetryListener) -> None:
    with _lock:
        if listener in _listeners:
            _listeners.remove(listener)


def store_type_of(source: object) -> str:
    """The store type a source's retries count under: its ``store_type``, else the backend
    module it comes from (``worker.stores.s3`` -> ``s3``), else ``other``."""
    declared = getattr(source, "store_type", None)
    if isinstance(declared, str):
        return declared
    module = type(source).__module__
    tail = module.rsplit(".", 1)[-1]
    if module.startswith("worker.stores.") and tail in STORE_TYPES:
        return tail
    return "other"
