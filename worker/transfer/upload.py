"""Store one local file in a store at a content-addressed key, never overwriting.

The key depends on the sha256, so the hashes come first: one read of the file through the same
in-order sink as downloads (md5 on one thread, sha1 + sha256 on another). The store is then asked
whether that content is already there, and only new content is sent, with the store's
conditional create and the md5, so the store can reject bytes that differ from the ones hashed.
Each backend sends large files as parallel parts itself (S3 multipart, Azure blocks, Swift SLO
segments, GCS resumable chunks), because how parts are assembled, and conditionally, differs
per store. A file that changes between hashing and sending is refused (:class:`Changed`). A
local folder (a :class:`~worker.stores.base.StagingStore`) gets its private copy in the hashing
read itself and compares the file with it when asked to create the key: a second read, but no
second md5 and no second write.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from worker.errors import (
    AlreadyExists,
    Changed,
    HaulError,
    KeyConflict,
    NotFound,
    TransientError,
)
from worker.hashing import Digests
from worker.retry import store_type_of
from worker.stores.base import ObjectInfo, StagingStore, Store
from worker.transfer.config import TransferConfig
from worker.transfer.sink import hash_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Uploaded:
    digests: Digests
    key: str
    #: True when the content was already in the store and nothing was sent
    deduplicated: bool
    seconds: float


@dataclass(frozen=True)
class Hashed:
    """A local file and its digests, with what identified the file when it was hashed."""

    path: Path
    digests: Digests
    identity: tuple[int, int, int]
    #: the store that holds a private copy written in the same read as the hashes
    staged_in: StagingStore | None = None

    def check_unchanged(self) -> None:
        if _identity(self.path) != self.identity:
            raise Changed(f"{self.path.name} changed while it was being stored")

    def discard(self) -> None:
        """Remove the private copy if the store did not use it (content already there...)."""
        if self.staged_in is not None:
            self.staged_in.unstage(self.path)


def _identity(path: Path) -> tuple[int, int, int]:
    # lstat: a file swapped for a symlink (to a secret elsewhere) or a FIFO after the scan
    # refused such things must not be followed or opened, only noticed as changed.
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise Changed(f"{path.name} is no longer a regular file")
    return st.st_ino, st.st_size, st.st_mtime_ns


def hash_file(path: Path, cfg: TransferConfig, store: Store | None = None) -> Hashed:
    """The three digests in one read; Changed if the file moved meanwhile.

    For a :class:`StagingStore` (a local folder) and a file up to the multipart threshold, the
    same read also writes the store's private copy, which its ``create`` compares with the file
    instead of copying it with a second md5 (the caller calls ``Hashed.discard`` in the end).
    Larger files are not staged, so content the store already holds is not written in vain.
    """
    before = _identity(path)
    threshold = cfg.multipart_threshold_bytes
    staging = store if isinstance(store, StagingStore) and before[1] <= threshold else None
    if staging is not None:
        fd = staging.stage(path)
        try:
            digests = hash_path(path, threaded_above=threshold, copy_to=fd)
        except BaseException:
            staging.unstage(path)
            raise
        finally:
            os.close(fd)
    else:
        digests = hash_path(path, threaded_above=threshold)
    hashed = Hashed(path, digests, before, staging)
    if _identity(path) != before:
        hashed.discard()
        raise Changed(f"{path.name} changed while it was being hashed")
    return hashed


def _same_content(info: ObjectInfo, digests: Digests) -> bool:
    return info.size == digests.size and (info.md5 is None or info.md5 == digests.md5)


def is_stored(store: Store, key: str, digests: Digests) -> bool:
    """True when ``key`` holds this content; KeyConflict when it holds something else."""
    try:
        info = store.stat(key)
    except NotFound:
        return False
    if not _same_content(info, digests):
        raise KeyConflict(
            f"{key} already holds other bytes ({info.size} bytes) than this content "
            f"({digests.size} bytes); it was not overwritten"
        )
    return True


def send(store: Store, hashed: Hashed, key: str, cfg: TransferConfig) -> bool:
    """Create ``key`` from the file unless it holds the content already; True when it did."""

    def attempt() -> bool:
        if is_stored(store, key, hashed.digests):
            return True
        hashed.check_unchanged()
        try:
            store.create(key, hashed.path, size=hashed.digests.size, md5=hashed.digests.md5)
        except AlreadyExists:
            # Someone else stored it meanwhile: the same content, or a KeyConflict.
            return is_stored(store, key, hashed.digests) or _gone(key)
        return False

    try:
        return cfg.policy.call(
            attempt, store_type=store_type_of(store), what=f"storing {hashed.path.name} as {key}"
        )
    except HaulError:
        log.warning("storing %s as %s failed", hashed.path.name, key)
        raise


def _gone(key: str) -> bool:
    raise TransientError(f"{key} was taken and then vanished; trying again")


def upload(
    store: Store,
    path: Path,
    key_for: Callable[[Digests], str],
    cfg: TransferConfig,
) -> Uploaded:
    """Hash, then store at ``key_for(digests)`` (content already there is not sent again)."""
    started = time.monotonic()
    hashed = hash_file(path, cfg, store)
    try:
        key = key_for(hashed.digests)
        deduplicated = send(store, hashed, key, cfg)
    finally:
        hashed.discard()
    return Uploaded(hashed.digests, key, deduplicated, time.monotonic() - started)
