"""``haul fetch URL... --to DIR``: the transfer engine without a queue.

Each URL (http(s), or a store URL read through :mod:`worker.stores.registry`, wildcards
included) is downloaded into ``DIR`` under its base name, with all three hashes, and reported in
the seed format of ``haul.log`` (contract section 3)::

    16:05:40 /data/train-labels.gz: downloaded, 28.9 kB
    16:05:40 /data/train-labels.gz: md5 sum: f76a0d20f478ea899cb9ff102548d868
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import TextIO
from urllib.parse import unquote, urlsplit

from worker.errors import HaulError, NoMatch
from worker.hashing import Digests
from worker.paths import clean_relative
from worker.settings import LocalStoreConfig, Settings, StoreConfig
from worker.sizes import format_size
from worker.stores.base import ObjectInfo, ObjectSource
from worker.stores.http import HttpSource
from worker.stores.local import LocalStore
from worker.stores.registry import adhoc_config, build_store, owns
from worker.transfer.batch import BatchItem, BatchResult, download_many
from worker.transfer.cache import Cache
from worker.transfer.config import TransferConfig
from worker.urls import matches, parse_input_url, redact_url, wildcard_prefix


def _stamp() -> str:
    return time.strftime("%H:%M:%S", time.localtime())


def _log_lines(path: str, digests: Digests) -> list[str]:
    """The seed-format ``haul.log`` lines for one downloaded file."""
    now = _stamp()
    return [
        f"{now} {path}: downloaded, {format_size(digests.size)}",
        f"{now} {path}: md5 sum: {digests.md5}",
        f"{now} {path}: sha1 sum: {digests.sha1}",
        f"{now} {path}: sha256 sum: {digests.sha256}",
    ]


def _http_name(url: str) -> str:
    name = unquote(PurePosixPath(urlsplit(url).path).name)
    try:
        clean_relative(name)
    except HaulError:
        return "download"
    return name


class _Sources:
    """Builds each source once (connections are reused across URLs)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._http: HttpSource | None = None
        self._stores: dict[str, ObjectSource] = {}

    def http(self) -> HttpSource:
        if self._http is None:
            self._http = HttpSource(
                allow_private=self.settings.allow_private_addresses,
                timeout_s=self.settings.http_timeout_s,
                max_redirects=self.settings.max_redirects,
                max_connections=max(self.settings.files_in_flight, self.settings.concurrency),
            )
        return self._http

    def for_url(self, url: str) -> tuple[ObjectSource, str]:
        """The store that reads ``url`` and the key (or wildcard pattern) inside it."""
        parsed = parse_input_url(url)
        settings = self.settings
        for name, cfg in settings.all_stores().items():
            if owns(cfg, settings.store_secrets(name), parsed):
                store = self._store(name, cfg)
                if isinstance(cfg, LocalStoreConfig):
                    rel = Path(parsed.key).relative_to(cfg.path)
                    return store, rel.as_posix()
                return store, parsed.key
        if parsed.scheme == "file":
            path = Path(parsed.key)
            key = f"file:{path.parent}"
            if key not in self._stores:
                self._stores[key] = LocalStore("file", path.parent)
            return self._stores[key], path.name
        adhoc = adhoc_config(parsed)
        name = f"{parsed.scheme}-{'-'.join(parsed.location)}"
        return self._store(name, adhoc), parsed.key

    def _store(self, name: str, cfg: StoreConfig) -> ObjectSource:
        if name not in self._stores:
            secrets = self.settings.store_secrets(name)
            self._stores[name] = build_store(name, cfg, secrets, self.settings)
        return self._stores[name]

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
        for store in self._stores.values():
            store.close()


def _expand(url: str, sources: _Sources, to: Path) -> Iterator[BatchItem]:
    scheme = url.partition("://")[0].lower()
    if scheme in ("http", "https"):
        yield BatchItem(sources.http(), url, to / _http_name(url))
        return
    source, key = sources.for_url(url)
    if not parse_input_url(url).has_wildcard:
        yield BatchItem(source, key, to / PurePosixPath(key).name)
        return
    found: list[ObjectInfo] = [
        info for info in source.list(wildcard_prefix(key)) if matches(key, info.key)
    ]
    if not found:
        raise NoMatch(f"{redact_url(url)} matched nothing")
    for info in found:
        yield BatchItem(source, info.key, to / PurePosixPath(info.key).name, info=info)


def run_fetch(urls: list[str], to: Path, settings: Settings, out: TextIO) -> int:
    """Download every URL into ``to``; print the seed-format lines; 0 when all succeeded."""
    cfg = TransferConfig.from_settings(settings)
    cache = Cache.from_settings(settings)
    sources = _Sources(settings)
    failed = 0
    try:
        items: list[BatchItem] = []
        for url in urls:
            try:
                items.extend(_expand(url, sources, to))
            except HaulError as exc:
                failed += 1
                out.write(f"{_stamp()} {redact_url(url)}: error: {exc}\n")
        to.mkdir(parents=True, exist_ok=True)

        def report(result: BatchResult) -> None:
            if result.downloaded is not None:
                lines = _log_lines(str(result.item.dest), result.downloaded.digests)
                out.write("\n".join(lines) + "\n")
            else:
                shown = result.item.source.uri(result.item.key)
                out.write(f"{_stamp()} {shown}: error: {result.error}\n")
            out.flush()

        results = download_many(items, cfg, cache=cache, on_done=report)
        failed += sum(1 for r in results if not r.ok)
    finally:
        sources.close()
    return 1 if failed else 0
