"""What a live-outputs watch and ``store_outputs`` of one execution share, in Redis.

* ``haul:watch:stop:<execution>``: set by ``store_outputs`` when it begins; the watch polls it
  and ends. Nothing waits on it: a watch holds no lease that delays ``store_outputs``.
* ``haul:watch:active:<execution>``: set while a watch may run; only then does
  ``store_outputs`` take the per-file lock below (one round trip less per file otherwise).
* ``haul:watch:file:<execution>:<digest of path>``: a short lock per file, so the watch and
  ``store_outputs`` never store one file at the same moment (content is sent once). A watch
  killed while holding one leaves it behind until it expires; ``store_outputs`` does not wait
  for it once the watch's own lease (``haul:lease:haul.watch_outputs:<execution>``) is gone:
  storing is idempotent (same datum id, conditional create), the lock only saves a second
  upload.
* ``haul:watch:stored:<execution>``: path -> the live record of each file the watch stored:
  its datum id and the inode, size and mtime it had, so ``store_outputs`` recognises the very
  same file without reading it again.
* ``haul:watch:round:<execution>``: the task id of the watch round allowed to run, and
  ``haul:watch:started:<execution>``: when the first round began (``watch_max_s`` counts
  from there); ``haul:watch:seen:<execution>``: a round has seen the execution folder, so its
  absence now means it was removed. See :mod:`worker.pipeline.watch` for the rounds.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

from redis import Redis
from redis.exceptions import LockError

from worker.constants import (
    KEY_LEASE,
    KEY_WATCH_ACTIVE,
    KEY_WATCH_FILE_LOCK,
    KEY_WATCH_ROUND,
    KEY_WATCH_SEEN,
    KEY_WATCH_STARTED,
    KEY_WATCH_STOP,
    KEY_WATCH_STORED,
    TASK_WATCH_OUTPUTS,
)

_TTL_S = 30 * 24 * 3600
#: a file lock left by a dead holder expires after this long
_LOCK_S = 60.0
_POLL_S = 0.1

# KEYS[1]: the round key. ARGV[1]: this round's id; ARGV[2]: the id of the round that sent it
# ("" for an orchestrator's message). Returns 1 when this round may run.
_TAKE_ROUND = """
local current = redis.call('GET', KEYS[1])
if not current then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
  return 1
end
if current == ARGV[1] then return 1 end
if ARGV[2] ~= '' and current == ARGV[2] then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
  return 1
end
return 0
"""


@dataclass(frozen=True)
class FileSignature:
    """What identifies one version of a file without reading it."""

    ino: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileSignature:
        return cls(st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass(frozen=True)
class LiveRecord:
    datum_id: str
    file: FileSignature
    #: the sidecar applied to the datum (None: none was)
    sidecar: FileSignature | None

    def encode(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def decode(cls, raw: bytes | str) -> LiveRecord:
        doc = json.loads(raw)
        side = doc.get("sidecar")
        return cls(doc["datum_id"], FileSignature(**doc["file"]), side and FileSignature(**side))


class LiveFiles:
    def __init__(self, client: Redis[bytes], execution_id: str) -> None:
        self.client = client
        self.execution_id = execution_id
        self._take = client.register_script(_TAKE_ROUND)

    def _key(self, prefix: str) -> str:
        return f"{prefix}:{self.execution_id}"

    # ------------------------------------------------------------------ store_outputs side
    def stop(self) -> bool:
        """``store_outputs`` began: every watch of the execution ends. True when a watch may
        have run (then files it stored are recognised); one round trip for both."""
        pipe = self.client.pipeline(transaction=False)
        pipe.set(self._key(KEY_WATCH_STOP), "1", ex=_TTL_S)
        pipe.exists(self._key(KEY_WATCH_ACTIVE))
        _, active = pipe.execute()
        return bool(active)

    # ------------------------------------------------------------------ watch side
    def stopped(self) -> bool:
        return bool(self.client.exists(self._key(KEY_WATCH_STOP)))

    def take_round(self, round_id: str, after: str | None) -> bool:
        """True when this round may run (it is current, or succeeds the current one)."""
        ok = self._take(
            keys=[self._key(KEY_WATCH_ROUND)], args=[round_id, after or "", int(_TTL_S)]
        )
        return bool(ok)

    def started_at(self) -> float:
        """When the first round began (epoch seconds); marks the execution as watched."""
        pipe = self.client.pipeline()
        pipe.set(self._key(KEY_WATCH_STARTED), repr(time.time()), nx=True, ex=_TTL_S)
        pipe.set(self._key(KEY_WATCH_ACTIVE), "1", ex=_TTL_S)
        pipe.get(self._key(KEY_WATCH_STARTED))
        raw = pipe.execute()[-1]
        return float(raw)

    def folder_seen(self) -> bool:
        """A round of this watch has seen the execution folder (so its absence means gone)."""
        return bool(self.client.exists(self._key(KEY_WATCH_SEEN)))

    def saw_folder(self) -> None:
        self.client.set(self._key(KEY_WATCH_SEEN), "1", ex=_TTL_S)

    def watch_alive(self) -> bool:
        """A watch round holds its lease (a heartbeat) right now."""
        return bool(self.client.exists(f"{KEY_LEASE}:{TASK_WATCH_OUTPUTS}:{self.execution_id}"))

    # ------------------------------------------------------------------ both
    @contextmanager
    def file_lock(self, rel: str, *, unless_watch_died: bool = False) -> Iterator[None]:
        """Hold the file's lock; with ``unless_watch_died``, go on without it once no watch
        holds its lease (the lock is then a dead watch's leftover)."""
        digest = hashlib.sha256(rel.encode()).hexdigest()
        lock = self.client.lock(
            f"{KEY_WATCH_FILE_LOCK}:{self.execution_id}:{digest}", timeout=_LOCK_S
        )
        deadline = time.monotonic() + _LOCK_S
        while not lock.acquire(blocking=False):
            if time.monotonic() > deadline or (unless_watch_died and not self.watch_alive()):
                yield
                return
            time.sleep(_POLL_S)
        try:
            yield
        finally:
            with contextlib.suppress(LockError):
                lock.release()

    def get(self, rel: str) -> LiveRecord | None:
        raw = self.client.hget(self._key(KEY_WATCH_STORED), rel)
        return None if raw is None else LiveRecord.decode(raw)

    def all(self) -> dict[str, LiveRecord]:
        raw = self.client.hgetall(self._key(KEY_WATCH_STORED))
        return {
            (k.decode() if isinstance(k, bytes) else k): LiveRecord.decode(v)
            for k, v in raw.items()
        }

    def put(self, rel: str, record: LiveRecord) -> None:
        pipe = self.client.pipeline()
        pipe.hset(self._key(KEY_WATCH_STORED), rel, record.encode())
        pipe.expire(self._key(KEY_WATCH_STORED), _TTL_S)
        pipe.execute()
