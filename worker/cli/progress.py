"""Progress bars for people at a terminal: ``haul fetch`` and ``haul submit --wait``.

rich draws on stderr, and only when stderr is a terminal (and ``--quiet`` is not given): a
pipe or a log file gets the plain lines and no escape codes. One bar per large file (one that
reports progress, i.e. runs longer than the reporting interval), plus a total with bytes, rate
and ETA. The bars read :class:`~worker.transfer.progress.Progress` reports (``haul fetch``) or
``haul.transfer.progress`` events (``haul submit --wait``); both carry the same fields.
"""

from __future__ import annotations

import threading
from types import TracebackType
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from rich.progress import Progress as RichProgress
    from rich.progress import TaskID

#: how often a fetch reports a large file's progress while bars are shown
BAR_INTERVAL_S = 0.25


def _progress(stream: TextIO) -> RichProgress:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    return Progress(
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(file=stream, stderr=True),
        transient=False,
    )


def wanted(stream: TextIO, quiet: bool) -> bool:
    """Bars only for a person: a terminal, and not ``--quiet``."""
    if quiet:
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class Bars:
    """Per-file bars and a total; safe to feed from several transfer threads."""

    def __init__(self, stream: TextIO, files: int | None = None) -> None:
        self._p = _progress(stream)
        self._lock = threading.Lock()
        self._files: dict[str, TaskID] = {}
        self._done: dict[str, int] = {}
        self._totals: dict[str, int] = {}
        self._complete: set[str] = set()
        self._finished_files = 0
        self._count = files
        self._total = self._p.add_task(self._total_label(), total=None)

    def __enter__(self) -> Bars:
        self._p.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._p.stop()

    def _total_label(self) -> str:
        of = f"/{self._count}" if self._count is not None else ""
        return f"total ({self._finished_files}{of} files)"

    def _refresh_total(self) -> None:
        known = sum(self._totals.values())
        self._p.update(
            self._total,
            completed=sum(self._done.values()),
            total=known or None,
            description=self._total_label(),
        )

    def expect(self, files: int) -> None:
        """How many files the total counts (once the URLs are expanded)."""
        with self._lock:
            self._count = files
            self._refresh_total()

    def update(self, label: str, bytes_done: int, bytes_total: int | None) -> None:
        """A large file moved on (a progress report or event)."""
        with self._lock:
            task = self._files.get(label)
            if task is None:
                task = self._files[label] = self._p.add_task(label, total=bytes_total)
            self._p.update(task, completed=bytes_done, total=bytes_total)
            self._done[label] = bytes_done
            if bytes_total is not None:
                self._totals[label] = bytes_total
            self._refresh_total()

    def finished(self, label: str, size_bytes: int) -> None:
        """A file is complete (large or small)."""
        with self._lock:
            if label in self._complete:
                return
            self._complete.add(label)
            self._finished_files += 1
            self._done[label] = self._totals[label] = size_bytes
            task = self._files.get(label)
            if task is not None:
                self._p.update(task, completed=size_bytes, total=size_bytes)
            self._refresh_total()

    def print(self, text: str) -> None:
        """A line above the bars (rich keeps them at the bottom)."""
        self._p.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def feed_event(self, event: dict[str, Any]) -> bool:
        """Take a ``haul.transfer.progress`` event; False for any other event."""
        if event.get("type") != "haul.transfer.progress":
            return False
        data = event.get("data") or {}
        total = data.get("bytes_total")
        label, done = str(data.get("path")), int(data.get("bytes_done") or 0)
        self.update(label, done, total)
        if total is not None and done == total:
            self.finished(label, total)
        return True
