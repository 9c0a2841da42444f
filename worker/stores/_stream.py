"""A :class:`~worker.stores.base.ByteStream` over an SDK's chunk iterator, with a byte count.

Some SDKs end a body early without an error (python-swiftclient does, when its one HTTP
connection is reused under a running download). Every cloud store therefore reads through
:class:`CountedStream`, which knows how many bytes the range must hold and raises
:class:`~worker.errors.IntegrityError` on a short or long body instead of returning 0 early.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

from worker.errors import IntegrityError
from worker.stores.base import ByteStream


class CountedStream:
    """Copies chunks from ``chunks`` into the caller's buffers; checks the total at the end.

    ``guard`` returns the backend's translating context manager, so SDK errors raised while the
    body is read become haul errors at the same boundary as everywhere else in that backend.
    """

    def __init__(
        self,
        chunks: Iterator[bytes],
        *,
        expected: int,
        what: str,
        guard: Callable[[], AbstractContextManager[None]],
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self._chunks = chunks
        self._expected = expected
        self._what = what
        self._guard = guard
        self._on_close = on_close
        self._pending = memoryview(b"")
        self.received = 0
        self._done = False

    def _next_chunk(self) -> bool:
        with self._guard():
            chunk = next(self._chunks, None)
        if chunk is None:
            self._done = True
            if self.received != self._expected:
                raise IntegrityError(
                    f"{self._what}: body ended after {self.received} of {self._expected} bytes"
                )
            return False
        self.received += len(chunk)
        if self.received > self._expected:
            raise IntegrityError(
                f"{self._what}: body is longer than the {self._expected} bytes announced"
            )
        self._pending = memoryview(chunk)
        return True

    def readinto(self, buffer: memoryview) -> int:
        while not self._pending:
            if self._done or not self._next_chunk():
                return 0
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def close(self) -> None:
        self._done = True
        self._pending = memoryview(b"")
        if self._on_close is not None:
            on_close, self._on_close = self._on_close, None
            with self._guard():
                on_close()


def range_end(start: int, length: int | None, size: int) -> int:
    """The exclusive end of a read of ``length`` bytes from ``start`` in an object of ``size``."""
    if start < 0 or (length is not None and length < 0):
        raise ValueError("start and length must be >= 0")
    end = size if length is None else min(size, start + length)
    return max(start, end)


def read_all(stream: ByteStream) -> bytes:
    """The whole remaining body of a stream (small records)."""
    out = bytearray()
    buf = memoryview(bytearray(1024 * 1024))
    while n := stream.readinto(buf):
        out += buf[:n]
    return bytes(out)
