"""Progress of one transfer, reported at a bounded rate."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from worker.errors import Interrupted


@dataclass(frozen=True)
class Progress:
    label: str
    bytes_done: int
    bytes_total: int | None
    rate_bytes_s: float
    eta_s: float | None
    final: bool = False


ProgressFn = Callable[[Progress], None]


class ProgressMeter:
    """Counts bytes from any thread; calls ``report`` at most every ``interval_s`` seconds."""

    def __init__(
        self,
        label: str,
        total: int | None,
        report: ProgressFn | None,
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
        cancel: threading.Event | None = None,
    ) -> None:
        self.label = label
        self._cancel = cancel
        self.total = total
        self._report = report
        self._interval = interval_s
        self._clock = clock
        self._start = clock()
        self._last = self._start
        self._done = 0
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        # Every transfer path counts its bytes here, so this is where a stop request lands:
        # within one read of being asked.
        if n > 0 and self._cancel is not None and self._cancel.is_set():
            raise Interrupted(f"{self.label}: transfer interrupted")
        with self._lock:
            self._done += n
            now = self._clock()
            due = self._report is not None and now - self._last >= self._interval
            if due:
                self._last = now
                snapshot = self._snapshot(now, final=False)
        if due and self._report is not None:
            self._report(snapshot)

    def reset(self, done: int = 0) -> None:
        with self._lock:
            self._done = done

    def finish_report(self) -> None:
        """Report the final numbers, if this transfer reported anything before (a long one)."""
        with self._lock:
            reported = self._last != self._start
            snapshot = self._snapshot(self._clock(), final=True)
        if reported and self._report is not None:
            self._report(snapshot)

    def _snapshot(self, now: float, *, final: bool) -> Progress:
        elapsed = max(now - self._start, 1e-9)
        rate = self._done / elapsed
        eta = None
        if self.total is not None and rate > 0:
            eta = max(self.total - self._done, 0) / rate
        return Progress(self.label, self._done, self.total, rate, eta, final)
