"""Small immutable records in a store, written with the store's conditional create.

History (alias moves, dataset version pages) is never rewritten: each record is created once
at a key of its own with the same conditional create that outputs use, so two workers writing
the same record (a redelivery) leave one object, and nothing older is ever replaced.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

from worker.errors import AlreadyExists
from worker.stores.base import Store


def create_once(store: Store, key: str, data: bytes) -> bool:
    """Create ``key`` holding ``data``; False when it existed already (left as it was)."""
    with tempfile.TemporaryDirectory(prefix="haul-record-") as tmp:
        path = Path(tmp) / "record.json"
        path.write_bytes(data)
        try:
            store.create(
                key, path, size=len(data), md5=hashlib.md5(data, usedforsecurity=False).hexdigest()
            )
        except AlreadyExists:
            return False
    return True
