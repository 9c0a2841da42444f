"""Bounded pools of page-aligned buffers, granted in ticket order (chunks, hashing).

Used by :mod:`worker.transfer.chunked` for ranged chunks and by
:func:`worker.transfer.sink.hash_path` for local files; it depends on neither.
"""

from __future__ import annotations

import mmap
import threading

Buffer = mmap.mmap


class Cancelled(Exception):
    """Raised inside fetchers once the download failed elsewhere."""


class BufferPool:
    """At most ``count`` buffers of ``size`` bytes, granted in ticket order."""

    def __init__(self, count: int, size: int) -> None:
        self.count = count
        self.size = size
        self._free: list[Buffer] = []
        self._made = 0
        self._next_ticket = 0
        self._cond = threading.Condition()
        self.cancelled = False
        #: the most buffers ever out at once (tests check the bound)
        self.peak_out = 0
        #: threads waiting for a buffer right now
        self.waiting = 0
        self._out = 0

    def acquire(self, ticket: int) -> Buffer:
        with self._cond:
            while not self.cancelled and (
                ticket != self._next_ticket or (not self._free and self._made >= self.count)
            ):
                self.waiting += 1
                self._cond.wait()
                self.waiting -= 1
            if self.cancelled:
                raise Cancelled
            self._next_ticket += 1
            if self._free:
                buf = self._free.pop()
            else:
                # Allocated on first use: a 20 MiB object never touches 80 MiB of buffers.
                # Anonymous maps are page-aligned, which O_DIRECT writes need.
                buf = mmap.mmap(-1, self.size)
                self._made += 1
            self._out += 1
            self.peak_out = max(self.peak_out, self._out)
            self._cond.notify_all()
            return buf

    def release(self, buf: Buffer) -> None:
        with self._cond:
            self._free.append(buf)
            self._out -= 1
            self._cond.notify_all()

    def cancel(self) -> None:
        with self._cond:
            self.cancelled = True
            self._cond.notify_all()
