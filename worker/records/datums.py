"""The datum index: one record per stored output version, in Redis and in the store.

Redis keys:

* ``haul:datum:<id>``: the datum's JSON record.
* ``haul:datums:<project>``: the set of the project's datum ids.
* ``haul:refs:<store>:<sha256 of key>``: ids of live (not purged) datums whose content is at
  that key. Content is removed from the store only when this set is empty.

The store keeps ``<prefix>/datums/<project>/<id>.json`` next to the data, so the index can be
rebuilt from the store alone (:meth:`DatumIndex.reindex`).
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from redis import Redis
from redis.exceptions import LockError

from worker.constants import (
    KEY_CONTENT_REFS,
    KEY_DATUM,
    KEY_PROJECT_DATUMS,
    STORE_DATA_DIR,
    STORE_DATUMS_DIR,
)
from worker.errors import NotFound
from worker.models import Datum
from worker.stores.base import Store, join_key

_NAMESPACE = uuid.UUID("0b8d6a4e-2f61-4a53-8d0e-1f2a3b4c5d6e")
#: how often a reservation looks again while a purge holds the content's lock
_LOCK_POLL_S = 0.1

# The reservation of a datum not recorded yet, in one round trip: what taking the content's
# lock, adding the reference and giving the lock back did in three. It adds the reference only
# while nobody (a purge) holds the lock. KEYS: the datum's record, the content's lock, the
# content's references; ARGV[1]: the datum id. 1: reserved; 0: the lock is held (try again);
# 2: the datum is recorded already (the caller checks whether it was purged).
_RESERVE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 2 end
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('SADD', KEYS[3], ARGV[1])
return 1
"""
# A new datum's record and its two set memberships in one round trip. KEYS: the record, the
# project's datums, the content's references; ARGV: the record, the datum id. nil: recorded
# now; else the record that was there (a redelivery, whose references the caller adds).
_ADD = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX') then
  redis.call('SADD', KEYS[2], ARGV[2])
  redis.call('SADD', KEYS[3], ARGV[2])
  return false
end
return redis.call('GET', KEYS[1])
"""


def datum_id(project_id: str, execution_id: str, path: str, sha256: str) -> str:
    """Deterministic: storing the same file of the same execution again gives the same id."""
    return uuid.uuid5(_NAMESPACE, "\x1f".join((project_id, execution_id, path, sha256))).hex


def content_key(prefix: str, project_id: str, sha256: str, file_name: str) -> str:
    """``<prefix>/data/<project>/<sha256[0:2]>/<sha256>/<file name>`` (contract section 5)."""
    return join_key(prefix, STORE_DATA_DIR, project_id, sha256[:2], sha256, file_name)


def record_key(prefix: str, project_id: str, datum: str) -> str:
    return join_key(prefix, STORE_DATUMS_DIR, project_id, f"{datum}.json")


def _refs_key(store: str, key: str) -> str:
    return f"{KEY_CONTENT_REFS}:{store}:{hashlib.sha256(key.encode()).hexdigest()}"


def _encode(datum: Datum) -> bytes:
    return json.dumps(datum.model_dump(mode="json"), sort_keys=True, indent=1).encode()


class DatumIndex:
    def __init__(self, client: Redis[bytes]) -> None:
        self.client = client
        self._reserve: Any = client.register_script(_RESERVE)
        self._add: Any = client.register_script(_ADD)

    @contextmanager
    def content_lock(self, store: str, key: str, timeout_s: float = 120.0) -> Iterator[None]:
        """Serialise "add a reference" against "remove the content" for one key."""
        lock = self.client.lock(
            _refs_key(store, key) + ":lock", timeout=timeout_s, blocking_timeout=timeout_s
        )
        with lock:
            yield

    def get(self, datum: str) -> Datum:
        raw = self.client.get(f"{KEY_DATUM}:{datum}")
        if raw is None:
            raise NotFound(f"no datum {datum}")
        return Datum.model_validate_json(raw)

    def is_purged(self, datum: str) -> bool:
        raw = self.client.get(f"{KEY_DATUM}:{datum}")
        return raw is not None and bool(json.loads(raw).get("purged"))

    def reserve(self, store: str, key: str, datum: str, timeout_s: float = 120.0) -> bool:
        """Count ``datum`` as a reference to ``key`` before its content is (maybe) sent, under
        the content's lock (:meth:`content_lock`) so that a purge of another datum with the
        same content cannot delete it in between; False (nothing reserved) when ``datum``
        itself was purged: storing the same file again must not revive it.

        A datum not recorded yet (the usual case) is reserved in one round trip; waiting for a
        purge's lock takes as long as :meth:`content_lock` would (``LockError`` after it).
        """
        refs = _refs_key(store, key)
        keys = [f"{KEY_DATUM}:{datum}", refs + ":lock", refs]
        deadline = time.monotonic() + timeout_s
        while (got := int(self._reserve(keys=keys, args=[datum]))) == 0:
            if time.monotonic() > deadline:
                raise LockError(f"the content lock of {key} was held for {timeout_s:g} s")
            time.sleep(_LOCK_POLL_S)
        if got == 2:
            if self.is_purged(datum):
                return False
            with self.content_lock(store, key, timeout_s):
                self.client.sadd(refs, datum)
        return True

    def release(self, store: str, key: str, datum: str) -> None:
        """Undo :meth:`reserve` when the datum was not recorded after all."""
        if self.client.get(f"{KEY_DATUM}:{datum}") is None:
            self.client.srem(_refs_key(store, key), datum)

    def add(self, datum: Datum) -> Datum:
        """Record a new datum; an existing record with the same id wins (redelivery)."""
        payload = json.dumps(datum.model_dump(mode="json"))
        keys = [
            f"{KEY_DATUM}:{datum.datum_id}",
            f"{KEY_PROJECT_DATUMS}:{datum.project_id}",
            _refs_key(datum.store, datum.key),
        ]
        raw = self._add(keys=keys, args=[payload, datum.datum_id])
        if raw is None:
            return datum
        current = Datum.model_validate_json(raw)
        if not current.purged:
            pipe = self.client.pipeline()
            pipe.sadd(f"{KEY_PROJECT_DATUMS}:{datum.project_id}", datum.datum_id)
            pipe.sadd(_refs_key(current.store, current.key), datum.datum_id)
            pipe.execute()
        return current

    def update(self, datum: Datum) -> Datum:
        """Replace a live datum's record (new sidecar metadata); a purged record stays as is."""
        current = self.get(datum.datum_id)
        if current.purged:
            return current
        self.client.set(f"{KEY_DATUM}:{datum.datum_id}", json.dumps(datum.model_dump(mode="json")))
        return datum

    def mark_purged(self, datum: Datum, when: str) -> tuple[Datum, int]:
        """Set ``purged: true`` (first time wins); return it and the live references left."""
        updated = (
            datum if datum.purged else datum.model_copy(update={"purged": True, "purged_at": when})
        )
        refs = _refs_key(datum.store, datum.key)
        pipe = self.client.pipeline()
        pipe.set(f"{KEY_DATUM}:{datum.datum_id}", json.dumps(updated.model_dump(mode="json")))
        pipe.srem(refs, datum.datum_id)
        pipe.scard(refs)
        results: list[Any] = pipe.execute()
        return updated, int(results[-1])

    def write_store_record(self, store: Store, datum: Datum) -> None:
        store.put_record(record_key(store.prefix, datum.project_id, datum.datum_id), _encode(datum))

    def reindex(self, store: Store) -> int:
        """Load every datum record kept in ``store`` into Redis; return how many."""
        count = 0
        for info in store.list(join_key(store.prefix, STORE_DATUMS_DIR) + "/"):
            if not info.key.endswith(".json"):
                continue
            datum = Datum.model_validate_json(store.get_record(info.key))
            payload = json.dumps(datum.model_dump(mode="json"))
            pipe = self.client.pipeline()
            pipe.set(f"{KEY_DATUM}:{datum.datum_id}", payload)
            pipe.sadd(f"{KEY_PROJECT_DATUMS}:{datum.project_id}", datum.datum_id)
            if datum.purged:
                pipe.srem(_refs_key(datum.store, datum.key), datum.datum_id)
            else:
                pipe.sadd(_refs_key(datum.store, datum.key), datum.datum_id)
            pipe.execute()
            count += 1
        return count
