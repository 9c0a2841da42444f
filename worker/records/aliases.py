"""Datum aliases per project: every move kept, the latest ``created_at`` wins (contract 9).

Redis keeps one sorted set per alias, ``haul:alias:<project>:<alias>``: one member per move
(a compact JSON of the datum's ``created_at``, ``datum_id`` and ``execution_id``), scored by the
datum's ``created_at`` in milliseconds. The alias points at the highest member. A move is one
Lua script (add the member, read its neighbour below and whether it is now the highest), so two
executions moving one alias at once both land in the history and the later ``created_at`` wins
whichever worker got there first; nothing is read and written back from the client, so nothing
can be lost or torn. The same move again (a redelivery) is the same member: a no-op.

The store keeps each move as its own object,
``<prefix>/aliases/<project>/<alias>/<created_at>-<datum_id>.json``, created with the store's
conditional create, so :meth:`AliasIndex.reindex` rebuilds every history from the store alone.

An alias whose latest datum was purged resolves to nothing: it does not fall back to an earlier
datum (a purged model must not silently come back as an older one).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from redis import Redis

from worker.constants import ALIAS_PATTERN, DATUM_ID_PATTERN, KEY_ALIAS, STORE_ALIASES_DIR
from worker.errors import NotFound
from worker.models import Datum
from worker.records.once import create_once
from worker.stores.base import Store, join_key

_ALIAS_RE = re.compile(ALIAS_PATTERN)
_DATUM_ID_RE = re.compile(DATUM_ID_PATTERN)

# KEYS[1]: the alias's history; ARGV[1]: score; ARGV[2]: the move.
# Returns {previous member or "", 1 when the move is now the latest}.
_MOVE = """
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
local rank = redis.call('ZRANK', KEYS[1], ARGV[2])
local previous = ''
if rank > 0 then previous = redis.call('ZRANGE', KEYS[1], rank - 1, rank - 1)[1] end
local top = redis.call('ZRANGE', KEYS[1], -1, -1)[1]
if top == ARGV[2] then return {previous, 1} end
return {previous, 0}
"""


def alias_problem(alias: str) -> str | None:
    """Why ``alias`` cannot be used, or None when it can."""
    if _DATUM_ID_RE.fullmatch(alias):
        return f"valohai.alias {alias!r} has the shape of a datum id (32 hex characters)"
    if not _ALIAS_RE.fullmatch(alias):
        return f"valohai.alias {alias[:140]!r} does not match {ALIAS_PATTERN}"
    return None


def is_datum_id(text: str) -> bool:
    return _DATUM_ID_RE.fullmatch(text) is not None


@dataclass(frozen=True)
class AliasMove:
    project_id: str
    alias: str
    datum_id: str
    previous_datum_id: str | None
    execution_id: str
    created_at: str
    #: True when this move is the alias's latest (it points at ``datum_id`` now)
    current: bool = True


def _history_key(project_id: str, alias: str) -> str:
    return f"{KEY_ALIAS}:{project_id}:{alias}"


def _member(created_at: str, datum_id: str, execution_id: str) -> str:
    return json.dumps(
        {"created_at": created_at, "datum_id": datum_id, "execution_id": execution_id},
        sort_keys=True,
        separators=(",", ":"),
    )


def _score(created_at: str) -> float:
    return datetime.fromisoformat(created_at.replace("Z", "+00:00")).timestamp() * 1000


def _compact_time(created_at: str) -> str:
    """``2026-12-03T07:16:51.123Z`` -> ``20261203T071651123Z``: sorts as the time does."""
    return re.sub(r"[^0-9TZ]", "", created_at)


def record_key(prefix: str, project_id: str, alias: str, created_at: str, datum_id: str) -> str:
    name = f"{_compact_time(created_at)}-{datum_id}.json"
    return join_key(prefix, STORE_ALIASES_DIR, project_id, alias, name)


class AliasIndex:
    def __init__(self, client: Redis[bytes]) -> None:
        self.client = client
        self._move = client.register_script(_MOVE)

    def move(self, datum: Datum, alias: str) -> AliasMove:
        """Point ``alias`` at ``datum`` (the later ``created_at`` wins); the move as kept."""
        member = _member(datum.created_at, datum.datum_id, datum.execution_id)
        raw: list[Any] = self._move(
            keys=[_history_key(datum.project_id, alias)],
            args=[_score(datum.created_at), member],
        )
        previous_raw, current = raw
        previous = json.loads(previous_raw)["datum_id"] if previous_raw else None
        return AliasMove(
            project_id=datum.project_id,
            alias=alias,
            datum_id=datum.datum_id,
            previous_datum_id=previous,
            execution_id=datum.execution_id,
            created_at=datum.created_at,
            current=bool(current),
        )

    def write_store_record(self, store: Store, move: AliasMove) -> bool:
        """Keep the move in the store as its own object; False when it was there already."""
        body = {
            "project_id": move.project_id,
            "alias": move.alias,
            "datum_id": move.datum_id,
            "previous_datum_id": move.previous_datum_id,
            "execution_id": move.execution_id,
            "created_at": move.created_at,
        }
        key = record_key(store.prefix, move.project_id, move.alias, move.created_at, move.datum_id)
        return create_once(store, key, json.dumps(body, sort_keys=True, indent=1).encode())

    def resolve(self, project_id: str, alias: str) -> str:
        """The datum id ``alias`` points at; NotFound when it points nowhere."""
        top = self.client.zrange(_history_key(project_id, alias), -1, -1)
        if not top:
            raise NotFound(f"datum://{alias} is not an alias of project {project_id}")
        datum_id: str = json.loads(top[0])["datum_id"]
        return datum_id

    def history(self, project_id: str, alias: str) -> list[AliasMove]:
        """Every move of ``alias``, oldest first; ``previous`` is the move before in that order."""
        moves: list[AliasMove] = []
        members = self.client.zrange(_history_key(project_id, alias), 0, -1)
        for i, raw in enumerate(members):
            m = json.loads(raw)
            moves.append(
                AliasMove(
                    project_id=project_id,
                    alias=alias,
                    datum_id=m["datum_id"],
                    previous_datum_id=moves[-1].datum_id if moves else None,
                    execution_id=m["execution_id"],
                    created_at=m["created_at"],
                    current=i == len(members) - 1,
                )
            )
        return moves

    def reindex(self, store: Store) -> int:
        """Load every alias move kept in ``store`` into Redis; return how many."""
        count = 0
        pipe = self.client.pipeline(transaction=False)
        for info in store.list(join_key(store.prefix, STORE_ALIASES_DIR) + "/"):
            if not info.key.endswith(".json"):
                continue
            rec = json.loads(store.get_record(info.key))
            member = _member(rec["created_at"], rec["datum_id"], rec["execution_id"])
            pipe.zadd(
                _history_key(rec["project_id"], rec["alias"]), {member: _score(rec["created_at"])}
            )
            count += 1
            if count % 500 == 0:
                pipe.execute()
        pipe.execute()
        return count
