"""Everything a job needs, built once per worker process from the settings."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from redis import Redis

from worker.errors import UnsupportedURL
from worker.events import EventPublisher
from worker.paths import safe_join
from worker.records.change_memory import ChangeMemory
from worker.records.datums import DatumIndex
from worker.settings import LocalStoreConfig, Settings, StoreSecrets
from worker.stores.base import ObjectSource, Store
from worker.stores.http import HttpSource
from worker.stores.registry import adhoc_config, build_store, owns
from worker.transfer.cache import Cache
from worker.transfer.config import TransferConfig
from worker.urls import ParsedURL


@dataclass
class Runtime:
    settings: Settings
    redis: Redis[bytes]
    events: EventPublisher
    transfer: TransferConfig
    http: HttpSource
    datums: DatumIndex
    changes: ChangeMemory
    cache: Cache | None = None
    _stores: dict[str, Store] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def from_settings(cls, settings: Settings, redis: Redis[bytes] | None = None) -> Runtime:
        client = redis or Redis.from_url(settings.redis_url, health_check_interval=30)
        return cls(
            settings=settings,
            redis=client,
            events=EventPublisher(client, settings.events_stream, settings.events_maxlen),
            transfer=TransferConfig.from_settings(settings),
            http=HttpSource(
                allow_private=settings.allow_private_addresses,
                timeout_s=settings.http_timeout_s,
                max_redirects=settings.max_redirects,
            ),
            datums=DatumIndex(client),
            changes=ChangeMemory(client),
            cache=Cache.from_settings(settings),
        )

    def close(self) -> None:
        self.http.close()
        for store in self._stores.values():
            store.close()

    def execution_dir(self, execution_id: str) -> Path:
        return safe_join(self.settings.executions_dir, execution_id)

    def store(self, name: str) -> Store:
        """The declared store ``name``, built on first use and kept for the process."""
        with self._lock:
            if name not in self._stores:
                stores = self.settings.all_stores()
                if name not in stores:
                    raise UnsupportedURL(
                        f"unknown store {name!r} (declared: {', '.join(sorted(stores))})"
                    )
                self._stores[name] = build_store(
                    name, stores[name], self.settings.store_secrets(name), self.settings
                )
            return self._stores[name]

    def source_for(self, url: ParsedURL) -> tuple[ObjectSource, str]:
        """The source that reads ``url`` and the key inside it (declared store, else ad hoc)."""
        if url.scheme in {"http", "https"}:
            return self.http, url.key
        for name, cfg in self.settings.all_stores().items():
            if owns(cfg, self.settings.store_secrets(name), url):
                store = self.store(name)
                if isinstance(cfg, LocalStoreConfig):
                    return store, url.key[len(str(cfg.path).rstrip("/")) + 1 :]
                return store, url.key
        cfg = adhoc_config(url)
        label = f"{url.scheme}://{'/'.join(url.location)}"
        with self._lock:
            if label not in self._stores:
                self._stores[label] = build_store(label, cfg, StoreSecrets(), self.settings)
            return self._stores[label], url.key
