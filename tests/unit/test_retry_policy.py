"""The one retry policy (worker/retry.py), with an injected clock, sleep and jitter: no test
here waits for real."""

from __future__ import annotations

import threading

import pytest

from worker.errors import Changed, HaulError, NotFound, TransientError
from worker.retry import (
    Allowance,
    RetryCancelled,
    RetryPolicy,
    add_retry_listener,
    remove_retry_listener,
    retry_counts,
    store_type_of,
)
from worker.stores.http import HttpSource
from worker.stores.local import LocalStore


class FakeTime:
    """A clock that only moves when the policy sleeps (or a test moves it)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float, cancel: threading.Event | None) -> bool:
        self.slept.append(seconds)
        self.now += seconds
        return cancel is not None and cancel.is_set()


def policy(t: FakeTime, **kw: float) -> RetryPolicy:
    """Jitter at its upper bound, so every wait is the formula's ceiling and exact."""
    args = {"max_attempts": 5, "budget_s": 60.0, "base_s": 0.2, "max_backoff_s": 10.0, **kw}
    return RetryPolicy(
        max_attempts=int(args["max_attempts"]),
        budget_s=args["budget_s"],
        base_s=args["base_s"],
        max_backoff_s=args["max_backoff_s"],
        clock=t.clock,
        sleep=t.sleep,
        jitter=lambda low, high: high,
    )


class Failing:
    """Raises ``errors`` in turn (the last one forever), counting calls."""

    def __init__(self, *errors: HaulError, then: object = None) -> None:
        self.errors = list(errors)
        self.calls = 0
        self.then = then

    def __call__(self) -> object:
        self.calls += 1
        if self.then is not None and self.calls > len(self.errors):
            return self.then
        raise self.errors[min(self.calls, len(self.errors)) - 1]


def test_a_persistent_transient_error_costs_exactly_max_attempts_calls() -> None:
    """Five attempts in all, four full-jitter waits that double (0.2, 0.4, 0.8, 1.6 s at the
    ceiling), then the last error itself."""
    t = FakeTime()
    fn = Failing(TransientError("HTTP 503"))
    with pytest.raises(TransientError, match="503"):
        policy(t).call(fn, store_type="http", what="x")
    assert fn.calls == 5
    assert t.slept == pytest.approx([0.2, 0.4, 0.8, 1.6])


def test_the_backoff_is_full_jitter_capped_by_max_backoff() -> None:
    """Each wait is drawn from [0, min(max_backoff_s, base_s * 2**retry)]."""
    bounds: list[tuple[float, float]] = []

    def jitter(low: float, high: float) -> float:
        bounds.append((low, high))
        return (low + high) / 2

    p = RetryPolicy(max_attempts=8, base_s=1.0, max_backoff_s=5.0, jitter=jitter)
    assert [p.backoff_s(n) for n in range(5)] == [0.5, 1.0, 2.0, 2.5, 2.5]
    assert bounds == [(0.0, 1.0), (0.0, 2.0), (0.0, 4.0), (0.0, 5.0), (0.0, 5.0)]


def test_errors_that_are_not_retryable_fail_at_once() -> None:
    """A NotFound is one call; so is an error the call site's ``retry_if`` declines."""
    t = FakeTime()
    fn = Failing(NotFound("gone"))
    with pytest.raises(NotFound):
        policy(t).call(fn, store_type="s3", what="x")
    assert fn.calls == 1
    changed = Failing(Changed("replaced"))
    with pytest.raises(Changed):
        policy(t).call(
            changed, store_type="s3", what="x", retry_if=lambda e: not isinstance(e, Changed)
        )
    assert changed.calls == 1 and t.slept == []


def test_retry_after_is_honoured_when_longer_than_the_backoff() -> None:
    """The server's ``Retry-After`` (``retry_after_s``) replaces a shorter backoff; a shorter
    wish than the backoff does not shorten it."""
    t = FakeTime()
    fn = Failing(
        TransientError("slow down", retry_after_s=7.0),
        TransientError("slow down", retry_after_s=0.01),
        then="ok",
    )
    assert policy(t).call(fn, store_type="s3", what="x") == "ok"
    assert t.slept == pytest.approx([7.0, 0.4])


def test_a_retry_after_past_the_budget_fails_now_instead_of_sleeping() -> None:
    """A wait that would end past ``budget_s`` after the first attempt is not started: the
    call fails with its error after one attempt and no sleep."""
    t = FakeTime()
    fn = Failing(TransientError("throttled", retry_after_s=120.0))
    with pytest.raises(TransientError):
        policy(t, budget_s=60.0).call(fn, store_type="azure", what="x")
    assert fn.calls == 1 and t.slept == []


def test_the_budget_bounds_the_whole_call_including_slow_attempts() -> None:
    """Attempts that each take 20 s (a stall to the read timeout) leave no room after the
    third: three calls within 60 s, not five."""
    t = FakeTime()

    def slow() -> None:
        t.now += 20.0
        raise TransientError("timed out")

    calls = []
    with pytest.raises(TransientError):
        policy(t, budget_s=60.0).call(lambda: calls.append(1) or slow(), store_type="s3", what="x")
    assert len(calls) == 3
    assert t.now - 1000.0 <= 60.0 + 20.0


def test_an_allowance_caps_the_retries_of_several_calls_together() -> None:
    """Two calls sharing an allowance of 3 retries make 1 + 3 attempts, then 1 attempt."""
    t = FakeTime()
    shared = Allowance(3)
    first, second = Failing(TransientError("503")), Failing(TransientError("503"))
    for fn in (first, second):
        with pytest.raises(TransientError):
            policy(t).call(fn, store_type="gcs", what="x", allowance=shared)
    assert (first.calls, second.calls) == (4, 1)


def test_a_cancelled_wait_raises_retry_cancelled() -> None:
    """Setting ``cancel`` (the transfer stopped elsewhere) ends the wait and the call."""
    t = FakeTime()
    cancel = threading.Event()
    cancel.set()
    fn = Failing(TransientError("503"))
    with pytest.raises(RetryCancelled):
        policy(t).call(fn, store_type="http", what="x", cancel=cancel)
    assert fn.calls == 1


def test_every_retry_is_counted_per_store_type_and_told_to_listeners() -> None:
    """Four retries of an s3 call add 4 to the s3 count and reach a registered listener."""
    t = FakeTime()
    heard: list[tuple[str, str]] = []

    def listener(store_type: str, exc: HaulError) -> None:
        heard.append((store_type, exc.code))

    before = retry_counts().get("s3", 0)
    add_retry_listener(listener)
    try:
        with pytest.raises(TransientError):
            policy(t).call(Failing(TransientError("503")), store_type="s3", what="x")
    finally:
        remove_retry_listener(listener)
    assert retry_counts()["s3"] - before == 4
    assert heard == [("s3", "transient_error")] * 4


def test_store_types_come_from_the_backend_module(tmp_path: object) -> None:
    """Sources are counted under their backend's type name; anything else is ``other``."""
    with HttpSource(allow_private=True) as http:
        assert store_type_of(http) == "http"
    assert store_type_of(LocalStore("x", tmp_path)) == "local"  # type: ignore[arg-type]
    assert store_type_of(object()) == "other"


def test_bad_numbers_are_refused_at_start() -> None:
    """Zero attempts or a non-positive budget are configuration errors, not runtime ones."""
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError, match="budget_s"):
        RetryPolicy(budget_s=0)
