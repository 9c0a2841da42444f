"""What content each (project, input URL) gave last time, and the warning when it changes.

Kept in Redis as ``haul:inputs:last:<project>:<sha256 of the redacted URL>`` with two slots:
``last`` (the newest execution that read the URL) and ``before`` (the one before it). When the
same execution records again (a redelivered message), it is compared with ``before``, so a retry
repeats the same warning instead of comparing with itself.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from worker.constants import KEY_CHANGE_MEMORY
from worker.sizes import format_size

_RECORD = """
local raw = redis.call('GET', KEYS[1])
local doc = {}
if raw then doc = cjson.decode(raw) end
local new = cjson.decode(ARGV[1])
local compare = nil
local last = doc['last']
if last and last['execution_id'] == new['execution_id'] then
  compare = doc['before']
  -- the same execution again (a redelivery): keep the first sighting when nothing changed
  if last['sha256'] == new['sha256'] and last['size'] == new['size'] then new = last end
else
  compare = last
  doc['before'] = last
end
doc['last'] = new
redis.call('SET', KEYS[1], cjson.encode(doc))
return cjson.encode({previous = compare or false, current = new})
"""


class ScriptClient(Protocol):
    def register_script(self, script: str) -> Any: ...


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
        raw = self._record(keys=[memory_key(project_id, url)], args=[json.dumps(asdict(seen))])
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
