"""Everything a job needs, built once per worker process from the settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from redis import Redis

from worker.errors import UnsafePathError
from worker.events import EventPublisher
from worker.observability import metrics
from worker.paths import safe_join
from worker.records.change_memory import ChangeMemory
from worker.records.datums import DatumIndex
from worker.settings import Settings
from worker.stores.resolver import Sources
from worker.transfer.cache import Cache
from worker.transfer.config import TransferConfig


@dataclass
class Runtime:
    settings: Settings
    redis: Redis[bytes]
    events: EventPublisher
    transfer: TransferConfig
    sources: Sources
    datums: DatumIndex
    changes: ChangeMemory
    cache: Cache | None = None

    @classmethod
    def from_settings(cls, settings: Settings, redis: Redis[bytes] | None = None) -> Runtime:
        client = redis or Redis.from_url(settings.redis_url, health_check_interval=30)
        metrics.register_stores({name: cfg.type for name, cfg in settings.all_stores().items()})
        metrics.count_retries()
        return cls(
            settings=settings,
            redis=client,
            events=EventPublisher(client, settings.events_stream, settings.events_maxlen),
            transfer=TransferConfig.from_settings(settings),
            sources=Sources(settings),
            datums=DatumIndex(client),
            changes=ChangeMemory(client),
            cache=Cache.from_settings(settings),
        )

    def close(self) -> None:
        self.sources.close()

    def execution_dir(self, execution_id: str) -> Path:
        """The execution's folder; UnsafePathError when it is a symlink (made by someone else:
        haul would read outputs from, or lay inputs out in, wherever it points)."""
        folder = safe_join(self.settings.executions_dir, execution_id)
        if folder.is_symlink():
            raise UnsafePathError(
                f"the execution folder of {execution_id} is a symlink; haul uses only real folders"
            )
        return folder
