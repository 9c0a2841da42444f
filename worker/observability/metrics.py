"""haul's Prometheus series (contract section 11), counted where the facts happen.

The series are built on first use, not at import: prometheus_client decides between
in-process and multiprocess values when the first metric is made, from
``PROMETHEUS_MULTIPROC_DIR``, which the worker's entry point sets before the pool forks
(:func:`worker.observability.multiproc.prepare`). A process that never sets it (a test calling
a pipeline directly) simply counts in its own registry. ``haul fetch`` serves no metrics and
calls :func:`discard` first: importing prometheus_client and making the series cost about
27 ms, paid on the small-object lane's thread at the first answer.

Labels stay bounded: ``store_type`` is one of :data:`STORE_TYPES`, ``direction`` in/out,
``task`` a task name, ``outcome`` one of :data:`OUTCOMES`. Never an execution id or a URL.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final, Literal, cast

if TYPE_CHECKING:
    from prometheus_client import Counter, Gauge, Histogram

STORE_TYPES: Final = ("local", "s3", "azure", "gcs", "swift", "http")
OUTCOMES: Final = ("success", "failure", "rejected")
Direction = Literal["in", "out"]
Outcome = Literal["success", "failure", "rejected"]
#: seconds: from a cached small input (tens of ms) to a many-GB transfer (hours)
TASK_BUCKETS_S: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300,
                         900, 3600, 4 * 3600, float("inf"))  # fmt: skip


class _Discarded:
    """Stands in for every series of a process that exposes none."""

    def labels(self, *_values: str) -> _Discarded:
        return self

    def inc(self, _amount: float = 1) -> None:
        pass

    def dec(self, _amount: float = 1) -> None:
        pass

    def observe(self, _value: float) -> None:
        pass


class _Series:
    transfer_bytes: Counter
    files: Counter
    task_seconds: Histogram
    retries: Counter
    checksum_mismatches: Counter
    input_changes: Counter
    cache_hits: Counter
    cache_misses: Counter
    tasks_running: Gauge

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.transfer_bytes = Counter(
            "haul_transfer_bytes",
            "Bytes moved by haul (cache hits included), by direction and store type.",
            ["direction", "store_type"],
        )
        self.files = Counter(
            "haul_files",
            "Files moved by haul (cache hits included), by direction and store type.",
            ["direction", "store_type"],
        )
        self.task_seconds = Histogram(
            "haul_task_seconds",
            "Wall time of haul's tasks, by task name and outcome.",
            ["task", "outcome"],
            buckets=TASK_BUCKETS_S,
        )
        self.retries = Counter(
            "haul_retries", "Transfer attempts repeated after a retryable error.", ["store_type"]
        )
        self.checksum_mismatches = Counter(
            "haul_checksum_mismatches",
            "Downloads whose bytes differed from the store's stated checksum or size.",
            ["store_type"],
        )
        self.input_changes = Counter(
            "haul_input_changes", "Inputs whose content differed from the URL's last reading."
        )
        self.cache_hits = Counter(
            "haul_cache_hits", "Inputs served from the worker's content cache."
        )
        self.cache_misses = Counter(
            "haul_cache_misses", "Cache look-ups that found no valid entry."
        )
        self.tasks_running = Gauge(
            "haul_tasks_running",
            "haul tasks running now, over every pool process.",
            ["task"],
            multiprocess_mode="livesum",
        )


class _DiscardedSeries(_Series):
    def __init__(self) -> None:  # no prometheus_client import, nothing registered
        nothing = cast(Any, _Discarded())
        for name in _Series.__annotations__:
            setattr(self, name, nothing)


_series: _Series | None = None
_lock = threading.Lock()
_store_types: dict[str, str] = {}


def series() -> _Series:
    global _series
    if _series is None:
        with _lock:
            if _series is None:
                _series = _Series()
    return _series


def discard() -> None:
    """Count nothing in this process (it never exposes metrics: ``haul fetch``)."""
    global _series
    with _lock:
        _series = _DiscardedSeries()


def initialize() -> None:
    """Make every bounded series exist at zero, so a rate() works from the first scrape."""
    s = series()
    for kind in STORE_TYPES:
        for direction in ("in", "out"):
            s.transfer_bytes.labels(direction, kind)
            s.files.labels(direction, kind)
        s.retries.labels(kind)
        s.checksum_mismatches.labels(kind)


def register_stores(types_by_name: Mapping[str, str]) -> None:
    """Tell the counters which type each configured store name is (at start, from settings)."""
    _store_types.update(types_by_name)


def store_type(store_name: str) -> str:
    """The bounded label for a store name: its configured type, or ``http`` for web sources."""
    kind = _store_types.get(store_name, store_name)
    return kind if kind in STORE_TYPES else "http"


def transferred(direction: Direction, store_name: str, size_bytes: int, *, files: int = 1) -> None:
    kind = store_type(store_name)
    s = series()
    s.transfer_bytes.labels(direction, kind).inc(max(size_bytes, 0))
    s.files.labels(direction, kind).inc(files)


def retry(store: str) -> None:
    """One retry (``store``: a store type, or a configured store's name)."""
    series().retries.labels(store_type(store)).inc()


_listening = False


def count_retries() -> None:
    """Count every retry of the one retry policy (:mod:`worker.retry`), once per process."""
    global _listening
    with _lock:
        if _listening:
            return
        _listening = True
    from worker.retry import add_retry_listener

    add_retry_listener(lambda kind, _error: retry(kind))


def checksum_mismatch(store: str) -> None:
    series().checksum_mismatches.labels(store_type(store)).inc()


def input_changed(count: int = 1) -> None:
    series().input_changes.inc(count)


def cache_hit() -> None:
    series().cache_hits.inc()


def cache_miss() -> None:
    series().cache_misses.inc()


def task_started(task: str) -> None:
    series().tasks_running.labels(task).inc()


def task_finished(task: str, outcome: Outcome | None, seconds: float) -> None:
    """``outcome`` None: the task will run again (a retry), so only the running gauge moves."""
    s = series()
    s.tasks_running.labels(task).dec()
    if outcome is not None:
        s.task_seconds.labels(task, outcome).observe(seconds)
