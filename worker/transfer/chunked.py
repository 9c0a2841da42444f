"""Parallel ranged chunks of one object, hashed and written in order with bounded buffers.

``concurrency`` fetcher threads read chunks (``chunk_size_bytes`` each, pinned to the version
of the first stat) straight into preallocated buffers. Chunks finish out of order; the calling
thread hands them to the :class:`~worker.transfer.sink.HashWriteSink` in order as soon as the
next one is there, and a buffer comes back to the pool once it is hashed and written.

Memory: the pool holds ``concurrency + 2`` buffers whatever the object's size. Buffers are
granted strictly in chunk order (a ticket per chunk), so the lowest chunk not yet hashed always
owns a buffer or is next in line for one: fetchers can run ahead of hashing by at most the pool,
and can never starve it (no deadlock when chunks already on disk are re-read on resume).

A failed range is retried on its own by the retry policy (:mod:`worker.retry`), within
``max_attempts`` per chunk and an allowance of retries for the whole object; a reset costs that
chunk, not the file. A :class:`Changed`
aborts the object at once: the caller starts over from a fresh stat.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from typing import Protocol

from worker.errors import Changed, HaulError, IntegrityError
from worker.observability.context import in_current_context
from worker.retry import Allowance, RetryCancelled, store_type_of
from worker.stores.base import ObjectInfo, ObjectSource, StreamContext
from worker.transfer.buffers import Buffer, BufferPool, Cancelled
from worker.transfer.config import TransferConfig
from worker.transfer.progress import ProgressMeter
from worker.transfer.sink import HashWriteSink, Piece

log = logging.getLogger(__name__)


def read_exactly(
    ctx: StreamContext, view: memoryview, what: str, on_bytes: Callable[[int], None] | None
) -> None:
    """Fill ``view`` from the stream; a short or long body is an :class:`IntegrityError`."""
    with ctx as body:
        got = 0
        want = len(view)
        while got < want:
            n = body.readinto(view[got:])
            if n == 0:
                raise IntegrityError(f"{what}: body ended after {got} of {want} bytes")
            got += n
            if on_bytes is not None:
                on_bytes(n)
        extra = bytearray(1)
        if body.readinto(memoryview(extra)):
            raise IntegrityError(f"{what}: body is longer than the {want} bytes asked for")


class RangeReader(Protocol):
    def read(
        self, key: str, *, start: int = 0, length: int | None = None, pin: ObjectInfo | None = None
    ) -> StreamContext: ...


def fetch_range(
    source: RangeReader,
    info: ObjectInfo,
    start: int,
    view: memoryview,
    cfg: TransferConfig,
    *,
    allowance: Allowance,
    meter: ProgressMeter | None,
    label: str,
    cancel: threading.Event,
    first: StreamContext | None = None,
) -> None:
    """Read ``len(view)`` bytes at ``start`` into ``view``; the retry policy retries this
    range alone (a :class:`Changed` is not retried here: the object starts over)."""
    what = f"{label} bytes {start}-{start + len(view) - 1}"
    pending = [first]

    def attempt() -> None:
        counted = [0]

        def on_bytes(n: int) -> None:
            counted[0] += n
            if meter is not None:
                meter.add(n)

        ctx, pending[0] = pending[0], None
        if ctx is None:
            ctx = source.read(info.key, start=start, length=len(view), pin=info)
        try:
            read_exactly(ctx, view, what, on_bytes)
        except HaulError:
            if meter is not None and counted[0]:
                meter.add(-counted[0])  # those bytes will come again
            raise

    try:
        cfg.policy.call(
            attempt,
            store_type=store_type_of(source),
            what=what,
            retry_if=_range_retryable,
            allowance=allowance,
            cancel=cancel,
        )
    except RetryCancelled:
        raise Cancelled from None


def _range_retryable(exc: HaulError) -> bool:
    return exc.retryable and not isinstance(exc, Changed)


def chunk_spans(size: int, chunk: int) -> Iterator[tuple[int, int, int]]:
    """(index, offset, length) of every chunk."""
    for index, offset in enumerate(range(0, size, chunk)):
        yield index, offset, min(chunk, size - offset)


class ChunkedDownload:
    """One object's parallel download into ``fd`` (already sized), feeding ``sink`` in order."""

    def __init__(
        self,
        source: ObjectSource,
        info: ObjectInfo,
        fd: int,
        cfg: TransferConfig,
        *,
        meter: ProgressMeter,
        label: str,
        done: set[int] | None = None,
        first: StreamContext | None = None,
        written: Callable[[Piece], None] | None = None,
        direct_fd: int | None = None,
    ) -> None:
        self.direct_fd = direct_fd
        self.source = source
        self._written = written
        self.info = info
        self.fd = fd
        self.cfg = cfg
        self.meter = meter
        self.label = label
        self.spans = list(chunk_spans(info.size, cfg.chunk_size_bytes))
        self.done = set(done or ())
        self.pending = [s for s in self.spans if s[0] not in self.done]
        workers = max(1, min(cfg.concurrency, len(self.pending)))
        self.pool = BufferPool(min(workers + 2, len(self.spans)), cfg.chunk_size_bytes)
        self.allowance = Allowance(cfg.max_attempts * max(4, workers))
        self.workers = workers
        self._first = first if 0 not in self.done else None
        self._cursor = 0
        self._lock = threading.Lock()
        self._ready: dict[int, Buffer] = {}
        self._ready_cond = threading.Condition()
        self._error: BaseException | None = None
        self._cancel = threading.Event()

    # ------------------------------------------------------------------ fetchers
    def _next_span(self) -> tuple[int, int, int] | None:
        with self._lock:
            if self._cursor >= len(self.pending):
                return None
            span = self.pending[self._cursor]
            self._cursor += 1
            return span

    def _fetcher(self) -> None:
        try:
            while (span := self._next_span()) is not None:
                index, offset, length = span
                buf = self.pool.acquire(index)
                first, self._first = (self._first, None) if index == 0 else (None, self._first)
                fetch_range(
                    self.source,
                    self.info,
                    offset,
                    memoryview(buf)[:length],
                    self.cfg,
                    allowance=self.allowance,
                    meter=self.meter,
                    label=self.label,
                    cancel=self._cancel,
                    first=first,
                )
                with self._ready_cond:
                    self._ready[index] = buf
                    self._ready_cond.notify_all()
        except Cancelled:
            return
        except BaseException as exc:  # noqa: BLE001 (handed to the ordering thread)
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        with self._ready_cond:
            if self._error is None:
                self._error = exc
            self._ready_cond.notify_all()
        self._cancel.set()
        self.pool.cancel()

    def _wait_ready(self, index: int) -> Buffer:
        with self._ready_cond:
            while index not in self._ready and self._error is None:
                self._ready_cond.wait()
            if self._error is not None:
                raise self._error
            return self._ready.pop(index)

    def _read_kept(self, view: memoryview, offset: int) -> None:
        """A chunk finished by an earlier attempt, read back once to be hashed (resume)."""
        if os.preadv(self.fd, [view], offset) != len(view):
            raise IntegrityError(f"{self.label}: the part file is shorter than its record says")

    # ------------------------------------------------------------------ ordering thread
    def run(
        self, sink_factory: type[HashWriteSink] = HashWriteSink, *, crc32c: bool = False
    ) -> HashWriteSink:
        """Fetch, hash and write every chunk; returns the finished sink (call ``finish``).
        ``crc32c``: the sink computes that checksum too (:attr:`Digests.crc32c`)."""
        sink = sink_factory(
            self.fd,
            threads=True,
            free=lambda piece: self.pool.release(piece.buffer),
            written=self._written,
            direct_fd=self.direct_fd,
            crc32c=crc32c,
        )
        threads = [
            threading.Thread(
                target=in_current_context(self._fetcher), name=f"haul-fetch-{i}", daemon=True
            )
            for i in range(self.workers)
        ]
        for t in threads:
            t.start()
        try:
            for index, offset, length in self.spans:
                if index in self.done:
                    buf = self.pool.acquire(index)
                    view = memoryview(buf)[:length]
                    self._read_kept(view, offset)
                    sink.feed(Piece(index, offset, view, buf, write=False))
                else:
                    buf = self._wait_ready(index)
                    sink.feed(Piece(index, offset, memoryview(buf)[:length], buf))
        except Cancelled:
            sink.close()
            assert self._error is not None
            raise self._error from None
        except BaseException as exc:
            self._fail(exc)
            sink.close()
            raise
        finally:
            if self._error is not None:
                self._cancel.set()
                self.pool.cancel()
            for t in threads:
                t.join()
            if self._first is not None:
                self._first.stream.close()
                self._first = None
        return sink
