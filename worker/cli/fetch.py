"""``haul fetch URL... --to DIR``: the transfer engine without a queue.

Each URL (http(s), or a store URL read through :mod:`worker.stores.registry`, wildcards
included) is downloaded into ``DIR`` under its base name, with all three hashes, and reported in
the seed format of ``haul.log`` (contract section 3)::

    16:05:40 /data/train-labels.gz: downloaded, 28.9 kB
    16:05:40 /data/train-labels.gz: md5 sum: f76a0d20f478ea899cb9ff102548d868
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import TextIO
from urllib.parse import unquote, urlsplit

from worker.cli.progress import BAR_INTERVAL_S, Bars
from worker.errors import HaulError
from worker.paths import check_relative
from worker.records.haul_log import file_lines, stamp
from worker.retry import RetryPolicy, store_type_of
from worker.settings import Settings
from worker.stores.resolver import Sources, expand_wildcard
from worker.transfer.batch import BatchItem, BatchResult, download_many
from worker.transfer.cache import Cache
from worker.transfer.config import TransferConfig
from worker.transfer.progress import Progress
from worker.urls import parse_input_url, redact_url

_FLUSH_EVERY_S = 0.2


def _label(item: BatchItem) -> str:
    """What the engine calls the file in its progress reports."""
    return item.label or str(item.dest)


def _http_name(url: str) -> str:
    # String operations, not PurePosixPath: this runs once per URL before the first request.
    name = unquote(urlsplit(url).path.rstrip("/").rpartition("/")[2])
    try:
        check_relative(name)
    except HaulError:
        return "download"
    # An encoded slash (%2F) names one file, not a folder to make.
    return "download" if "/" in name else name


def _expand(url: str, sources: Sources, to: Path, policy: RetryPolicy) -> Iterator[BatchItem]:
    parsed = parse_input_url(url)
    if parsed.scheme in ("http", "https"):
        yield BatchItem(sources.http(), url, to / _http_name(url))
        return
    source, key = sources.for_url(parsed)
    if not parsed.has_wildcard:
        yield BatchItem(source, key, to / PurePosixPath(key).name)
        return
    found = policy.call(
        lambda: expand_wildcard(source, key, url),
        store_type=store_type_of(source),
        what=f"listing {redact_url(url)}",
    )
    for info in found:
        yield BatchItem(source, info.key, to / PurePosixPath(info.key).name, info=info)


def run_fetch(
    urls: list[str], to: Path, settings: Settings, out: TextIO, bars: Bars | None = None
) -> int:
    """Download every URL into ``to``; print the seed-format lines; 0 when all succeeded.

    With ``bars`` (a person at a terminal), large files report often enough to draw them.
    """
    cfg = TransferConfig.from_settings(settings)
    if bars is not None:
        cfg = replace(cfg, progress_interval_s=min(cfg.progress_interval_s, BAR_INTERVAL_S))
    cache = Cache.from_settings(settings)
    sources = Sources(settings, any_local_file=True)
    failed = 0
    try:
        items: list[BatchItem] = []
        for url in urls:
            try:
                items.extend(_expand(url, sources, to, cfg.policy))
            except HaulError as exc:
                failed += 1
                out.write(f"{stamp()} {redact_url(url)}: error: {exc}\n")
        to.mkdir(parents=True, exist_ok=True)

        lock = threading.Lock()
        flushed = [time.monotonic()]

        def report(result: BatchResult) -> None:
            if bars is not None and result.downloaded is not None:
                bars.finished(_label(result.item), result.downloaded.digests.size)
            if result.downloaded is not None:
                text = "\n".join(file_lines(str(result.item.dest), result.downloaded.digests))
            else:
                shown = result.item.source.uri(result.item.key)
                text = f"{stamp()} {shown}: error: {result.error}"
            with lock:  # called from several threads
                out.write(text + "\n")
                # Lines show up at once for a person watching, without a write per file when
                # thousands of small files finish in a second.
                if time.monotonic() - flushed[0] >= _FLUSH_EVERY_S:
                    out.flush()
                    flushed[0] = time.monotonic()

        def moved(p: Progress) -> None:
            if bars is not None:
                bars.update(p.label, p.bytes_done, p.bytes_total)

        if bars is not None:
            bars.expect(len(items))
        try:
            results = download_many(
                items, cfg, cache=cache, on_done=report, progress=moved if bars else None
            )
        finally:
            out.flush()
        failed += sum(1 for r in results if not r.ok)
    finally:
        sources.close()
    return 1 if failed else 0
