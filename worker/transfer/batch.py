"""Many downloads at once: an input of thousands of small files.

A source that can fetch whole small objects on one thread (HTTP(S):
:mod:`worker.transfer.smallfiles`) gets its items first, on the calling thread, with up to
``files_in_flight`` requests in flight; what it hands back (larger objects, redirects, errors)
joins the other items on a pool of ``files_in_flight`` threads, where connections are reused
through each source's own pool. Small objects download in one request each and hash inline.
Large ones enter a gate one at a time, so the buffers in flight stay bounded (one chunked
download's pool, plus one small buffer per thread) while small files keep flowing beside it.

Every item gets its own result: a failed item does not stop the others; the caller decides
whether the input as a whole failed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from worker.errors import HaulError, InternalError, Interrupted
from worker.observability.context import in_current_context
from worker.stores.base import ObjectInfo, ObjectSource, SmallObjectReader
from worker.transfer.cache import Cache
from worker.transfer.config import TransferConfig
from worker.transfer.download import SMALL_MAX, Downloaded, download
from worker.transfer.progress import ProgressFn
from worker.transfer.smallfiles import SmallItem, fetch_small_items


@dataclass(frozen=True)
class BatchItem:
    source: ObjectSource
    key: str
    dest: Path
    info: ObjectInfo | None = None
    label: str | None = None


@dataclass(frozen=True)
class BatchResult:
    index: int
    item: BatchItem
    downloaded: Downloaded | None = None
    error: HaulError | None = None

    @property
    def ok(self) -> bool:
        return self.downloaded is not None


DoneFn = Callable[[BatchResult], None]


def download_many(
    items: Sequence[BatchItem],
    cfg: TransferConfig,
    *,
    cache: Cache | None = None,
    progress: ProgressFn | None = None,
    on_done: DoneFn | None = None,
    stop: threading.Event | None = None,
) -> list[BatchResult]:
    """Download every item; returns one result per item, in the order of ``items``.

    ``on_done`` is called (from a pool thread or the calling one, once per item, in completion
    order) as soon as an item finishes or fails. ``stop`` set by the caller lets items not yet
    started fail fast (a cancelled or already failed input). Only :class:`HaulError` is captured
    per item; any other exception is a bug and propagates.
    """
    results: list[BatchResult | None] = [None] * len(items)
    gate = threading.Semaphore(1)

    def run(index: int) -> BatchResult:
        item = items[index]
        if stop is not None and stop.is_set():
            result = BatchResult(index, item, error=Interrupted("cancelled before it started"))
        else:
            try:
                got = download(
                    item.source,
                    item.key,
                    item.dest,
                    cfg,
                    info=item.info,
                    label=item.label,
                    progress=progress,
                    cache=cache,
                    parallel_gate=gate,
                    cancel=stop,
                )
                result = BatchResult(index, item, downloaded=got)
            except HaulError as exc:
                result = BatchResult(index, item, error=exc)
        results[index] = result
        if on_done is not None:
            on_done(result)
        return result

    stop = stop or threading.Event()
    lanes, ordinary = _lanes(items, cfg)
    workers = max(1, min(cfg.files_in_flight, len(ordinary) or 1))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="haul-file") as pool:
        try:
            futures = [pool.submit(in_current_context(run), i) for i in ordinary]
            for source, small in lanes.items():

                def finished(index: int, got: Downloaded | None, error: HaulError | None) -> None:
                    result = BatchResult(index, items[index], downloaded=got, error=error)
                    results[index] = result
                    if on_done is not None:
                        on_done(result)

                # On this thread, while the pool works through the ordinary items.
                back = fetch_small_items(
                    source,
                    small,
                    limit=_lane_limit(cfg),
                    files_in_flight=cfg.files_in_flight,
                    cache=cache,
                    finished=finished,
                    stop=stop,
                )
                futures += [pool.submit(in_current_context(run), item.index) for item in back]
            for future in futures:
                future.result()
        except BaseException:
            # The task is being terminated (soft shutdown, time limit): stop the transfers in
            # flight now instead of letting the pool's exit wait for them to finish.
            stop.set()
            raise
    done: list[BatchResult] = []
    for index, result in enumerate(results):
        if result is None:
            # Never expected; but an item must not vanish from an input without a word.
            result = BatchResult(index, items[index], error=InternalError("no result recorded"))
            if on_done is not None:
                on_done(result)
        done.append(result)
    return done


def _lanes(
    items: Sequence[BatchItem], cfg: TransferConfig
) -> tuple[dict[SmallObjectReader, list[SmallItem]], list[int]]:
    """Items a source can fetch as whole small objects (by source), and the rest (indexes).

    An item the cache holds goes on the lane too: the lane looks the entry up as it builds
    the item's request and sends it as the validator (one conditional request: a ``304`` is
    copied from the cache, anything else brings the new body).
    """
    lanes: dict[SmallObjectReader, list[SmallItem]] = {}
    ordinary: list[int] = []
    # A protocol isinstance check costs ~10 us; thousands of items share a few sources.
    capable: dict[int, bool] = {}
    on = _lane_limit(cfg) > 0
    for index, item in enumerate(items):
        source = item.source
        able = capable.get(id(source))
        if able is None:
            able = capable[id(source)] = on and isinstance(source, SmallObjectReader)
        if able and item.info is None:
            reader = cast(SmallObjectReader, source)
            label = item.label or str(item.dest)
            small = SmallItem(index, reader, item.key, item.dest, label)
            lanes.setdefault(reader, []).append(small)
        else:
            ordinary.append(index)
    return lanes, ordinary


def _lane_limit(cfg: TransferConfig) -> int:
    """The largest object the small lane takes (larger ones are chunked the ordinary way)."""
    return min(SMALL_MAX, cfg.multipart_threshold_bytes) if cfg.small_lane else 0
