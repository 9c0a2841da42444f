"""Store one local file in a store at a content-addressed key, never overwriting.

The key depends on the sha256, so the hashes come first: one read of the file through the same
in-order sink as downloads (md5 on one thread, sha1 + sha256 on another). The store is then asked
whether that content is already there, and only new content is sent, with the store's
conditional create and the md5, so the store can reject bytes that differ from the ones hashed.
Each backend sends large files as parallel parts itself (S3 multipart, Azure blocks, Swift SLO
segments, GCS resumable chunks), because how parts are assembled, and conditionally, differs
per store. A file that changes between hashing and sending is refused (:class:`Changed`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from worker.errors import AlreadyExists, Changed, HaulError, NotFound
from worker.hashing import Digests
from worker.stores.base import Store
from worker.transfer.chunked import BufferPool
from worker.transfer.config import TransferConfig
from worker.transfer.retry import retrying
from worker.transfer.sink import HashWriteSink, Piece

log = logging.getLogger(__name__)

_HASH_PIECE = 4 * 1024 * 1024


@dataclass(frozen=True)
class Uploaded:
    digests: Digests
    key: str
    #: True when the content was already in the store and nothing was sent
    deduplicated: bool
    seconds: float


def _identity(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_ino, st.st_size, st.st_mtime_ns


def hash_local(path: Path, *, threaded_above: int = 16 * 1024 * 1024) -> Digests:
    """md5, sha1 and sha256 of a local file in one read, with bounded buffers."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        pool = BufferPool(4, _HASH_PIECE)
        sink = HashWriteSink(
            -1, threads=size > threaded_above, free=lambda p: pool.release(p.buffer)
        )
        try:
            offset = index = 0
            while True:
                buf = pool.acquire(index)
                n = os.preadv(fd, [buf], offset)
                if n == 0:
                    pool.release(buf)
                    break
                sink.feed(Piece(index, offset, memoryview(buf)[:n], buf, write=False))
                offset += n
                index += 1
            return sink.finish()
        finally:
            sink.close()
    finally:
        os.close(fd)


def upload(
    store: Store,
    path: Path,
    key_for: Callable[[Digests], str],
    cfg: TransferConfig,
) -> Uploaded:
    started = time.monotonic()
    before = _identity(path)
    digests = hash_local(path, threaded_above=cfg.multipart_threshold_bytes)
    if _identity(path) != before:
        raise Changed(f"{path.name} changed while it was being hashed")
    key = key_for(digests)

    def send() -> bool:
        try:
            existing = store.stat(key)
        except NotFound:
            existing = None
        if existing is not None and existing.size == digests.size:
            return True
        if _identity(path) != before:
            raise Changed(f"{path.name} changed while it was being stored")
        try:
            store.create(key, path, size=digests.size, md5=digests.md5)
        except AlreadyExists:
            return True
        return False

    try:
        deduplicated = retrying(
            send, attempts=cfg.max_attempts, base_s=cfg.backoff_base_s, max_s=cfg.backoff_max_s
        )
    except HaulError:
        log.warning("storing %s as %s failed", path.name, key)
        raise
    return Uploaded(digests, key, deduplicated, time.monotonic() - started)
