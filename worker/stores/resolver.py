"""Every source a process reads from, built once from the settings and shared.

A URL whose bucket / account+container / project+container is a declared store's is read with
that store's endpoint and credentials; any other with the SDK's default chain (contract 2). One
:class:`~worker.stores.http.HttpSource` serves every http(s) URL, so connections are reused.
"""

from __future__ import annotations

import threading
from pathlib import Path

from worker.errors import NoMatch, TooManyMatches, UnsupportedURL
from worker.settings import Settings, StoreConfig, StoreSecrets
from worker.stores.base import ObjectInfo, ObjectSource, Store
from worker.stores.http import HttpSource
from worker.stores.local import LocalStore
from worker.stores.registry import adhoc_config, build_store, key_of, owns
from worker.urls import ParsedURL, matches, redact_url, wildcard_prefix


class Sources:
    def __init__(self, settings: Settings, *, any_local_file: bool = False) -> None:
        """``any_local_file``: also read ``file://`` paths outside declared local stores
        (``haul fetch`` on a person's own machine; never the worker)."""
        self.settings = settings
        self.any_local_file = any_local_file
        self._http: HttpSource | None = None
        self._stores: dict[str, Store] = {}
        self._lock = threading.Lock()

    def http(self) -> HttpSource:
        with self._lock:
            if self._http is None:
                s = self.settings
                self._http = HttpSource(
                    allow_private=s.allow_private_addresses,
                    timeout_s=s.http_timeout_s,
                    max_redirects=s.max_redirects,
                    max_connections=max(s.files_in_flight, s.concurrency),
                )
            return self._http

    def _build(self, name: str, cfg: StoreConfig, secrets: StoreSecrets) -> Store:
        with self._lock:
            if name not in self._stores:
                self._stores[name] = build_store(name, cfg, secrets, self.settings)
            return self._stores[name]

    def store(self, name: str) -> Store:
        """The declared store ``name``, built on first use."""
        stores = self.settings.all_stores()
        if name not in stores:
            raise UnsupportedURL(f"unknown store {name!r} (declared: {', '.join(sorted(stores))})")
        return self._build(name, stores[name], self.settings.store_secrets(name))

    def for_url(self, url: ParsedURL) -> tuple[ObjectSource, str]:
        """The source that reads ``url`` and the key (or wildcard pattern) inside it."""
        if url.scheme in {"http", "https"}:
            return self.http(), url.key
        for name, cfg in self.settings.all_stores().items():
            if owns(cfg, self.settings.store_secrets(name), url):
                return self.store(name), key_of(cfg, url)
        if url.scheme == "file" and self.any_local_file:
            path = Path(url.key)
            label = f"file://{path.parent}"
            with self._lock:
                if label not in self._stores:
                    self._stores[label] = LocalStore(label, path.parent)
                return self._stores[label], path.name
        label = f"{url.scheme}://{'/'.join(url.location)}"
        cfg = adhoc_config(url)
        return self._build(label, cfg, self.settings.adhoc_store_secrets(cfg.type)), url.key

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
        for store in self._stores.values():
            store.close()


def expand_wildcard(
    source: ObjectSource, pattern: str, shown: str, limit: int | None = None
) -> list[ObjectInfo]:
    """Every object matching ``pattern`` (a prefix listing, matched here: emulators and some
    services ignore server-side globs); NoMatch when there is none, TooManyMatches (without
    listing further) when there are more than ``limit``."""
    found: list[ObjectInfo] = []
    for info in source.list(wildcard_prefix(pattern)):
        if matches(pattern, info.key) and not info.key.endswith("/"):
            if limit is not None and len(found) >= limit:
                raise TooManyMatches(
                    f"{redact_url(shown)} matches more than {limit} objects "
                    "(max_wildcard_matches); narrow the pattern or split the input"
                )
            found.append(info)
    if not found:
        raise NoMatch(f"{redact_url(shown)} matched no object")
    return found
