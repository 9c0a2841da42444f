"""The small-object lane of a batch: whole objects in one request each, on one thread.

A source that offers :class:`~worker.stores.base.SmallObjectReader` (HTTP(S) does) fetches every
item it can as a whole small object; each one is verified, hashed (md5, sha1, sha256 of bytes
already in memory) and put at its final name in one step
(:func:`~worker.transfer.place.write_whole`). An item the source hands back (not small, a
redirect, an error, a reset) goes the ordinary way, through :func:`~worker.transfer.download.
download`, which owns retries and error messages; so does every item when the lane is off.

An item the cache holds goes on the lane too, with the entry's version as a validator: one
request answers both "is the copy current?" and, when it is not, "what is the object now?".
An unchanged object is copied from the cache (its recorded hashes reused, ``cached``); a changed
one arrives whole in that same answer and replaces the entry. Before this, a cached item was
validated by a request of its own on the ordinary path, which at a network's latency costs the
same round trip as fetching it, on a thread pool instead of the lane: 2000 cached files of
10 KiB at 20 ms took twice as long as with no cache at all.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from worker.constants import PART_SUFFIX
from worker.errors import DestinationError, HaulError, IntegrityError
from worker.hashing import digest_bytes
from worker.observability import metrics
from worker.retry import store_type_of
from worker.stores.base import NotModified, SmallObject, SmallObjectReader
from worker.transfer.cache import Cache, CacheBatch, CachedEntry
from worker.transfer.download import Downloaded, drop_leftovers, source_id, verify
from worker.transfer.place import write_whole

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SmallItem:
    index: int
    source: SmallObjectReader
    key: str
    dest: Path
    label: str


#: ``finished(index, downloaded, error)``: exactly one of the two is set
Finished = Callable[[int, Downloaded | None, HaulError | None], None]


class _Dirs:
    """Target folders: made once per batch, a few kept open (one input may have thousands)."""

    _KEEP = 16

    def __init__(self) -> None:
        self._made: set[Path] = set()
        self._open: OrderedDict[Path, int] = OrderedDict()
        self._leftovers: dict[Path, set[str]] = {}

    def has_leftovers(self, dest: Path) -> bool:
        """Whether an interrupted download left a part file or record for ``dest``.

        The folder is listed once (usually new and empty) instead of two ``lstat`` per file.
        """
        names = self._leftovers.get(dest.parent)
        if names is None:
            try:
                with os.scandir(dest.parent) as found:
                    names = {e.name for e in found if PART_SUFFIX in e.name}
            except FileNotFoundError:
                names = set()
            self._leftovers[dest.parent] = names
        return any(n.startswith(dest.name + PART_SUFFIX) for n in names) if names else False

    def make(self, folder: Path) -> None:
        if folder not in self._made:
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise DestinationError(f"cannot make {folder}: {exc.strerror or exc}") from None
            self._made.add(folder)

    def fd(self, folder: Path) -> int:
        fd = self._open.get(folder)
        if fd is not None:
            self._open.move_to_end(folder)
            return fd
        self.make(folder)
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        self._open[folder] = fd
        if len(self._open) > self._KEEP:
            os.close(self._open.popitem(last=False)[1])
        return fd

    def close(self) -> None:
        for fd in self._open.values():
            os.close(fd)
        self._open.clear()


def fetch_small_items(
    source: SmallObjectReader,
    items: list[SmallItem],
    *,
    limit: int,
    files_in_flight: int,
    cache: Cache | None,
    finished: Finished,
    stop: threading.Event | None = None,
) -> list[SmallItem]:
    """Fetch what the lane can (objects of at most ``limit`` bytes); returns the items that
    have to go the ordinary way."""
    fallback: list[SmallItem] = []
    dirs = _Dirs()
    keep = cache.batch() if cache is not None else None
    # The cache's copy of an item (validated by its request itself) and its cache key (a URL
    # redaction, ~15 us), both made as the item's request is built: peeking at 2000 entries up
    # front held a warm batch's first request back by ~40 ms, more than a cold batch's.
    held: dict[int, CachedEntry] = {}
    cache_keys: dict[int, str] = {}

    def version(position: int) -> str | None:
        if cache is None:
            return None
        item = items[position]
        key = cache_keys[position] = source_id(item.source, item.key)
        entry = cache.peek(key)
        if entry is None:
            return None
        held[position] = entry
        return entry.version

    def deliver(position: int, got: SmallObject | NotModified | None) -> None:
        item = items[position]
        if got is None:
            fallback.append(item)
            return
        try:
            if isinstance(got, NotModified):
                reused = _reuse(item, got, cache, held.get(position), dirs)
                if reused is None:  # the entry went away meanwhile: fetch it for real
                    fallback.append(item)
                    return
                done = reused
                metrics.cache_hit()  # the server confirmed the held version
            else:
                if cache is not None:
                    metrics.cache_miss()
                done = _settle(item, got, keep, cache_keys.get(position), dirs)
        except IntegrityError as exc:
            metrics.checksum_mismatch(store_type_of(item.source))
            log.info("%s: %s; fetching it the ordinary way", item.label, exc)
            fallback.append(item)
        except HaulError as exc:
            finished(item.index, None, exc)
        except OSError as exc:
            # Not this lane's to judge (a folder where the file should be, no permission...):
            # the ordinary way meets the same problem and reports it as it always does.
            log.info("%s: %s; fetching it the ordinary way", item.label, exc)
            fallback.append(item)
        else:
            finished(item.index, done, None)

    try:
        source.fetch_small(
            [item.key for item in items],
            limit,
            deliver,
            max_connections=files_in_flight,
            stop=stop,
            held=version,
        )
    finally:
        dirs.close()
        if keep is not None:
            keep.close()
    return fallback


def _reuse(
    item: SmallItem,
    got: NotModified,
    cache: Cache | None,
    entry: CachedEntry | None,
    dirs: _Dirs,
) -> Downloaded | None:
    """Place the cached content the server just confirmed; None when it is no longer there.

    The entry's bytes are read whole (it is small) and placed like a downloaded body; the
    data file is checked against the identity its entry recorded, since another worker may
    have replaced or evicted it after it was peeked at.
    """
    if cache is None or entry is None:
        return None
    body = cache.read_confirmed(entry)
    if body is None:
        return None
    if dirs.has_leftovers(item.dest):
        drop_leftovers(item.dest)
    write_whole(item.dest, body, dir_fd=dirs.fd(item.dest.parent))
    info = replace(got.info, size=entry.digests.size)
    return Downloaded(entry.digests, info, got.seconds, cached=True)


def _settle(
    item: SmallItem,
    got: SmallObject,
    keep: CacheBatch | None,
    cache_key: str | None,
    dirs: _Dirs,
) -> Downloaded:
    """Verify, hash and place one whole object, and keep it in the cache."""
    if dirs.has_leftovers(item.dest):
        drop_leftovers(item.dest)
    digests = digest_bytes(got.body)
    verify(got.info, digests, item.label)
    write_whole(item.dest, got.body, dir_fd=dirs.fd(item.dest.parent))
    if keep is not None:
        key = cache_key or source_id(item.source, item.key)
        keep.add(key, got.info, got.body, digests)
    return Downloaded(digests, got.info, got.seconds)
