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
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from worker.errors import AlreadyExists, Changed, HaulError, NotFound
from worker.hashing import Digests
from worker.stores.base import Store
from worker.transfer.config import TransferConfig
from worker.transfer.retry import retrying
from worker.transfer.sink import hash_path

log = logging.getLogger(__name__)


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


def upload(
    store: Store,
    path: Path,
    key_for: Callable[[Digests], str],
    cfg: TransferConfig,
) -> Uploaded:
    started = time.monotonic()
    before = _identity(path)
    digests = hash_path(path, threaded_above=cfg.multipart_threshold_bytes)
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
