"""Many downloads at once: an input of thousands of small files.

Up to ``files_in_flight`` downloads run on a thread pool; connections are reused through each
source's own pool (one :class:`~worker.stores.http.HttpSource` for all HTTP items keeps them
alive). Small objects download in one request each and hash inline on their thread. Large ones
enter a gate one at a time, so the buffers in flight stay bounded (one chunked download's pool,
plus one small buffer per thread) while small files keep flowing beside it.

Every item gets its own result: a failed item does not stop the others; the caller decides
whether the input as a whole failed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from worker.errors import HaulError, Interrupted
from worker.stores.base import ObjectInfo, ObjectSource
from worker.transfer.cache import Cache
from worker.transfer.config import TransferConfig
from worker.transfer.download import Downloaded, download
from worker.transfer.progress import ProgressFn


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

    ``on_done`` is called (from a pool thread, once per item, in completion order) as soon as an
    item finishes or fails. ``stop`` set by the caller lets items not yet started fail fast
    (a cancelled or already failed input). Only :class:`HaulError` is captured per item; any
    other exception is a bug and propagates.
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

    workers = max(1, min(cfg.files_in_flight, len(items)))
    stop = stop or threading.Event()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="haul-file") as pool:
        try:
            for future in [pool.submit(run, i) for i in range(len(items))]:
                future.result()
        except BaseException:
            # The task is being terminated (soft shutdown, time limit): stop the transfers in
            # flight now instead of letting the pool's exit wait for them to finish.
            stop.set()
            raise
    return [r for r in results if r is not None]
