"""``haul reindex``: rebuild every index haul keeps in Redis from one store's records alone."""

from __future__ import annotations

from dataclasses import dataclass

from redis import Redis

from worker.records.aliases import AliasIndex
from worker.records.datasets import DatasetIndex
from worker.records.datums import DatumIndex
from worker.stores.base import Store


@dataclass(frozen=True)
class Reindexed:
    datums: int
    alias_moves: int
    dataset_versions: int


def reindex_store(client: Redis[bytes], store: Store) -> Reindexed:
    """Datums first: alias and dataset records name datums by id."""
    return Reindexed(
        datums=DatumIndex(client).reindex(store),
        alias_moves=AliasIndex(client).reindex(store),
        dataset_versions=DatasetIndex(client).reindex(store),
    )
