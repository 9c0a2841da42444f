"""md5, sha1 and sha256 in one pass over the bytes.

``hashlib`` releases the GIL for buffers above 2047 bytes, so the three digests can run on
separate threads: :class:`TripleHasher` with ``threads=True`` feeds each chunk to three worker
threads (in order, each hash on its own thread) and the cost is the slowest hash, not the sum.
For small files the thread hand-off costs more than it saves, so they hash inline.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_STOP = object()


@dataclass(frozen=True)
class Digests:
    md5: str
    sha1: str
    sha256: str
    size: int

    def as_dict(self) -> dict[str, str]:
        return {"md5": self.md5, "sha1": self.sha1, "sha256": self.sha256}


class _HashThread(threading.Thread):
    def __init__(self, name: str, depth: int) -> None:
        super().__init__(name=f"haul-hash-{name}", daemon=True)
        self.hash = hashlib.new(name)
        self.inbox: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None

    def run(self) -> None:
        update = self.hash.update
        while True:
            item = self.inbox.get()
            if item is _STOP:
                return
            buf, done = item
            try:
                update(buf)
            finally:
                done()


class TripleHasher:
    """Feed bytes in order with :meth:`update`; read :meth:`digests` at the end.

    With ``threads=True``, ``update`` returns before the hashes have consumed the buffer; the
    optional ``release`` callback runs once all three threads are done with it, so a caller that
    recycles buffers knows when one is free again. Memory stays bounded by ``depth`` buffers.
    """

    def __init__(self, *, threads: bool = False, depth: int = 4) -> None:
        self.size = 0
        self._threads: list[_HashThread] = []
        self._inline: list[Any] = []
        if threads:
            self._threads = [_HashThread(n, depth) for n in ("md5", "sha1", "sha256")]
            for t in self._threads:
                t.start()
        else:
            self._inline = [hashlib.md5(), hashlib.sha1(), hashlib.sha256()]  # noqa: S324

    def update(self, data: bytes | memoryview, release: Any = None) -> None:
        self.size += len(data)
        if not self._threads:
            for h in self._inline:
                h.update(data)
            if release is not None:
                release()
            return
        pending = [len(self._threads)]
        lock = threading.Lock()

        def done() -> None:
            with lock:
                pending[0] -= 1
                last = pending[0] == 0
            if last and release is not None:
                release()

        for t in self._threads:
            t.inbox.put((data, done))

    def digests(self) -> Digests:
        if self._threads:
            for t in self._threads:
                t.inbox.put(_STOP)
            for t in self._threads:
                t.join()
            md5, sha1, sha256 = (t.hash.hexdigest() for t in self._threads)
            self._threads = []
            self._inline = []
            return Digests(md5, sha1, sha256, self.size)
        md5, sha1, sha256 = (h.hexdigest() for h in self._inline)
        return Digests(md5, sha1, sha256, self.size)

    def close(self) -> None:
        """Stop the hash threads without a result (a failed transfer)."""
        for t in self._threads:
            t.inbox.put(_STOP)
        self._threads = []


def hash_file(path: Path, *, buffer_bytes: int = 4 * 1024 * 1024) -> Digests:
    """The three digests of a local file in one read (``haul hash``, outputs)."""
    size = path.stat().st_size
    hasher = TripleHasher(threads=size > 8 * buffer_bytes)
    try:
        with path.open("rb", buffering=0) as fh:
            while chunk := fh.read(buffer_bytes):
                hasher.update(chunk)
        return hasher.digests()
    finally:
        hasher.close()
