"""Redelivery records: which input files an earlier delivery of a message already finished.

A finished file is noted in one Redis hash per execution (``haul:inputs:files:<execution>``),
so a redelivered ``prepare_inputs`` reuses a complete file at its final name instead of
fetching it again. Records are written in batches (``_BATCH`` files, or every ``_EVERY_S``): a
few files finished just before a crash are fetched again, where a round trip per small file
would cost more. The last batch rides in the job's next event pipeline (:meth:`board`).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

from redis import Redis
from redis.exceptions import RedisError

from worker.constants import KEY_INPUT_FILES
from worker.hashing import Digests
from worker.stores.base import ObjectInfo

log = logging.getLogger(__name__)
_TTL_S = 30 * 24 * 3600
#: finished-file records are written to Redis in batches of this many, or this often
_BATCH = 200
_EVERY_S = 1.0


def finished_key(execution_id: str) -> str:
    return f"{KEY_INPUT_FILES}:{execution_id}"


class FinishedFiles:
    """The finished-file records of one execution: read once, buffered writes."""

    def __init__(
        self, redis: Redis[bytes], execution_id: str, stopped: threading.Event | None = None
    ) -> None:
        self.redis = redis
        self.key = finished_key(execution_id)
        #: set once the transfers were stopped (lease lost): nothing more is written then
        self.stopped = stopped
        self._buffer: dict[str | bytes, str] = {}
        self._lock = threading.Lock()
        self._flushed_at = time.monotonic()

    def load(self) -> dict[str, bytes]:
        """Files an earlier delivery of this message finished (one round trip for all)."""
        got = self.redis.hgetall(self.key)
        return {(k.decode() if isinstance(k, bytes) else k): v for k, v in got.items()}

    def note(self, fact: str, url: str, digests: Digests, info: ObjectInfo) -> None:
        """Note a finished file, so a redelivered message reuses it instead of fetching again."""
        record = {
            **digests.as_dict(),
            "size": digests.size,
            "url": url,
            "etag": info.etag,
            "version": info.version,
            "last_modified": info.last_modified,
            "checksum": info.checksum_note,
        }
        with self._lock:
            self._buffer[fact] = json.dumps(record)
            due = len(self._buffer) >= _BATCH
        if due:
            self.flush()
        else:
            self.flush_if_due()

    def flush_if_due(self) -> None:
        if time.monotonic() - self._flushed_at >= _EVERY_S:
            self.flush()

    def board(self, pipe: Any) -> None:
        """The last buffered records, written in ``pipe`` (a Rider: the job's next event
        pipeline); nothing once the transfers were stopped. Lost if that pipeline fails:
        records only save refetching."""
        with self._lock:
            batch, self._buffer = self._buffer, {}
        if batch and not (self.stopped is not None and self.stopped.is_set()):
            pipe.hset(self.key, mapping=batch)
            pipe.expire(self.key, _TTL_S)

    def landed(self) -> None:
        return None

    def flush(self) -> None:
        """Write the buffered records.

        Records only save refetching: a Redis error keeps the batch for the next flush (and
        is logged) instead of failing the input or hiding its real error. Once the transfers
        were stopped (the lease was lost, or a failure stopped the input) nothing more is
        written: a new holder of the lease may have fetched the same file again meanwhile.
        """
        with self._lock:
            batch, self._buffer = self._buffer, {}
            self._flushed_at = time.monotonic()
        if not batch or (self.stopped is not None and self.stopped.is_set()):
            return
        try:
            pipe = self.redis.pipeline()
            pipe.hset(self.key, mapping=batch)
            pipe.expire(self.key, _TTL_S)
            pipe.execute()
        except RedisError as exc:
            log.warning("could not record %d finished files for reuse: %s", len(batch), exc)
            with self._lock:
                self._buffer = {**batch, **self._buffer}


def reusable(
    before: dict[str, bytes], fact: str, url: str, key: str, dest: Path
) -> tuple[Digests, ObjectInfo] | None:
    """A redelivered message: the file of ``fact`` is already complete at its final name."""
    raw = before.get(fact)
    if raw is None or not dest.is_file():
        return None
    rec = json.loads(raw)
    if rec.get("url") != url or dest.stat().st_size != rec["size"]:
        return None
    info = ObjectInfo(
        key=key,
        size=rec["size"],
        etag=rec.get("etag"),
        version=rec.get("version"),
        last_modified=rec.get("last_modified"),
        checksum_note=rec.get("checksum") or "",
    )
    return Digests(rec["md5"], rec["sha1"], rec["sha256"], rec["size"]), info
