"""Store one local file in a store at a content-addressed key, never overwriting.

The key depends on the sha256, so the hashes come first: one read of the file through the same
in-order sink as downloads (md5 on one thread, sha1 + sha256 on another). The store is then asked
whether that content is already there, and only new content is sent. Stores that implement
:class:`~worker.stores.base.MultipartStore` get large files as parallel parts (``concurrency``
parts in flight, one buffer each, each part retried on its own); others get the store's
conditional create, with the md5 so the store can reject bytes that differ from the ones hashed.
A file that changes between hashing and sending is refused (:class:`Changed`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from worker.errors import AlreadyExists, Changed, HaulError, NotFound
from worker.hashing import Digests
from worker.stores.base import MultipartStore, MultipartUpload, Store
from worker.transfer.chunked import BufferPool, chunk_spans
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


def _send_parts(
    store: MultipartStore, key: str, path: Path, digests: Digests, cfg: TransferConfig
) -> bool:
    """Multipart upload; returns True when the key turned out to be taken already."""
    spans = list(chunk_spans(digests.size, cfg.chunk_size_bytes))
    upload: MultipartUpload = store.start_multipart(
        key, size=digests.size, part_size_bytes=cfg.chunk_size_bytes
    )
    local = threading.local()
    failed = threading.Event()
    fd = os.open(path, os.O_RDONLY)

    def send(span: tuple[int, int, int]) -> None:
        if failed.is_set():
            return
        index, offset, length = span
        buf = getattr(local, "buf", None)
        if buf is None:
            buf = local.buf = bytearray(cfg.chunk_size_bytes)
        view = memoryview(buf)[:length]
        if os.preadv(fd, [view], offset) != length:
            raise Changed(f"{path.name} shrank while it was being stored")
        try:
            retrying(
                lambda: upload.upload_part(index + 1, view),
                attempts=cfg.max_attempts,
                base_s=cfg.backoff_base_s,
                max_s=cfg.backoff_max_s,
            )
        except BaseException:
            failed.set()  # parts not started yet are skipped
            raise

    try:
        workers = max(1, min(cfg.concurrency, len(spans)))
        with ThreadPoolExecutor(workers, thread_name_prefix="haul-part") as pool:
            futures = [pool.submit(send, span) for span in spans]
            for future in futures:
                future.result()
        try:
            upload.complete()
        except AlreadyExists:
            return True
        else:
            return False
    except BaseException:
        upload.abort()
        raise
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
        if isinstance(store, MultipartStore) and digests.size > cfg.multipart_threshold_bytes:
            taken = _send_parts(store, key, path, digests, cfg)
            if _identity(path) != before:
                # The parts may hold bytes that were not hashed: remove what was stored.
                if not taken:
                    store.delete(key)
                raise Changed(f"{path.name} changed while it was being stored")
            return taken
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
