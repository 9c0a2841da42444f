"""Store one local file in a store at a content-addressed key, never overwriting.

The key depends on the sha256, so the hashes come first (one read of the file, all three
digests at once); the store is then asked whether that content is already there, and only new
content is sent, with the store's conditional create. The md5 goes along so the store can
reject bytes that differ from the ones hashed (a file changed between the two reads).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from worker.errors import AlreadyExists, Changed, NotFound
from worker.hashing import Digests, hash_file
from worker.stores.base import Store
from worker.transfer.config import TransferConfig
from worker.transfer.retry import retrying


@dataclass(frozen=True)
class Uploaded:
    digests: Digests
    key: str
    #: True when the content was already in the store and nothing was sent
    deduplicated: bool
    seconds: float


def upload(
    store: Store,
    path: Path,
    key_for: Callable[[Digests], str],
    cfg: TransferConfig,
) -> Uploaded:
    started = time.monotonic()
    digests = hash_file(path)
    key = key_for(digests)

    def send() -> bool:
        try:
            existing = store.stat(key)
        except NotFound:
            existing = None
        if existing is not None and existing.size == digests.size:
            return True
        if path.stat().st_size != digests.size:
            raise Changed(f"{path.name} changed while it was being stored")
        try:
            store.create(key, path, size=digests.size, md5=digests.md5)
        except AlreadyExists:
            return True
        return False

    deduplicated = retrying(
        send, attempts=cfg.max_attempts, base_s=cfg.backoff_base_s, max_s=cfg.backoff_max_s
    )
    return Uploaded(digests, key, deduplicated, time.monotonic() - started)
