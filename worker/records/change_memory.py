"""What content each (project, input URL) gave last time, and the warning when it changes.

Kept in Redis as ``haul:inputs:last:<project>:<sha256 of the redacted URL>`` with two slots:
``last`` (the newest execution that read the URL) and ``before`` (the one before it). Each
execution's result is also kept for 30 days (``...:<execution_id>``): a redelivered message
replays it, so a retry repeats the same warning (or none) even after other executions read the
URL meanwhile, and does not disturb what they will be compared with.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from redis.exceptions import NoScriptError

from worker.constants import KEY_CHANGE_MEMORY
from worker.sizes import format_size

_RECORD = """
local new = cjson.decode(ARGV[1])
-- A redelivered message of an execution that already recorded this content replays its first
-- result, whatever other executions read since, and leaves the memory as it is.
local replay = redis.call('GET', KEYS[2])
if replay then
  local r = cjson.decode(replay)
  if r['current']['sha256'] == new['sha256'] and r['current']['size'] == new['size'] then
    return replay
  end
end
local raw = redis.call('GET', KEYS[1])
local doc = {}
if raw then doc = cjson.decode(raw) end
local compare = nil
local last = doc['last']
if last and last['execution_id'] == new['execution_id'] then
  compare = doc['before']
else
  compare = last
  doc['before'] = last
end
doc['last'] = new
redis.call('SET', KEYS[1], cjson.encode(doc))
local result = cjson.encode({previous = compare or false, current = new})
redis.call('SET', KEYS[2], result, 'EX', ARGV[2])
return result
"""


_REPLAY_TTL_S = 30 * 24 * 3600


class ScriptClient(Protocol):
    def register_script(self, script: str) -> Any: ...

    def pipeline(self, transaction: bool = ...) -> Any: ...

    def script_load(self, script: str) -> Any: ...


@dataclass(frozen=True)
class Seen:
    md5: str
    sha1: str
    sha256: str
    size: int
    execution_id: str
    seen_at: str

    def same_content(self, other: Seen) -> bool:
        return (self.sha256, self.size) == (other.sha256, other.size)


def memory_key(project_id: str, url: str) -> str:
    digest = hashlib.sha256(url.encode()).hexdigest()
    return f"{KEY_CHANGE_MEMORY}:{project_id}:{digest}"


class ChangeMemory:
    def __init__(self, client: ScriptClient) -> None:
        self._record = client.register_script(_RECORD)

    def record(self, project_id: str, url: str, seen: Seen) -> tuple[Seen | None, Seen]:
        """Remember ``seen``; return (the previous sighting if its content differs, current).

        ``current`` is ``seen``, or the first sighting of this same execution when a
        redelivered message records the same content again (so events repeat exactly).
        """
        return _answer(self._record(**_script_call(project_id, url, seen)))

    def record_many(
        self,
        client: ScriptClient,
        project_id: str,
        sightings: list[tuple[str, Seen]],
        first: Callable[[Any], None] | None = None,
    ) -> tuple[list[Any], list[tuple[Seen | None, Seen]]]:
        """:meth:`record` for many URLs in one round trip; same answers.

        ``first(pipe)`` may queue other commands ahead of the scripts (the caller's reads of
        the same moment); their results come first in the returned pair. The scripts are
        called by their sha without redis-py's ``SCRIPT EXISTS`` before every pipeline: a
        Redis that does not know the script (first use, a restart) gets it loaded and the
        whole pipeline (reads and replay-safe scripts) once more.
        """

        def send() -> tuple[int, list[Any]]:
            pipe = client.pipeline(transaction=False)
            if first is not None:
                first(pipe)
            ahead = len(pipe.command_stack)
            for url, seen in sightings:
                call = _script_call(project_id, url, seen)
                pipe.evalsha(self._record.sha, len(call["keys"]), *call["keys"], *call["args"])
            return ahead, pipe.execute(raise_on_error=False)

        ahead, results = send()
        if any(isinstance(r, NoScriptError) for r in results):
            self._record.sha = client.script_load(self._record.script)
            ahead, results = send()
        for raw in results:
            if isinstance(raw, Exception):
                raise raw
        return results[:ahead], [_answer(raw) for raw in results[ahead:]]


def _script_call(project_id: str, url: str, seen: Seen) -> dict[str, Any]:
    key = memory_key(project_id, url)
    return {
        "keys": [key, f"{key}:{seen.execution_id}"],
        "args": [json.dumps(asdict(seen)), _REPLAY_TTL_S],
    }


def _answer(raw: str | bytes) -> tuple[Seen | None, Seen]:
    doc = json.loads(raw)
    current = Seen(**doc["current"])
    if not doc["previous"]:
        return None, current
    previous = Seen(**doc["previous"])
    return (None if previous.same_content(current) else previous), current


def change_message(url: str, previous: Seen, current: Seen) -> str:
    """What a person reads in the warning: what changed, since which execution and when."""
    size_note = (
        f"size {format_size(previous.size)} -> {format_size(current.size)}"
        if previous.size != current.size
        else f"same size ({format_size(current.size)})"
    )
    return (
        f"content of {url} changed since execution {previous.execution_id} read it at "
        f"{previous.seen_at}: sha256 {previous.sha256} -> {current.sha256}, {size_note}"
    )
