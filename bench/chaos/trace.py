"""Where a lost execution's message went: the broker's view, the worker's log, the kills.

For each message of a lost execution (its Celery task id, from
:attr:`~bench.chaos.load.Execution.sent`) :func:`trace_lost` says whether it is still in a queue
list, in kombu's ``unacked`` hash, has a task state in the result backend, was logged as
received by a worker, and which kill or Redis restart came nearest after it was sent. With
``--trace`` a :class:`Monitor` thread also follows Redis ``MONITOR`` and keeps, per task id,
every command that moved its message (the publish, kombu's ``unacked`` bookkeeping, a restore),
so the trace shows whether the message was ever recorded as delivered.
"""

from __future__ import annotations

import json
import re
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import redis

from bench.chaos.load import Execution
from worker.constants import ALL_QUEUES

_TASK_ID = re.compile(r'"id": ?"([0-9a-f-]{36})"')
#: the commands that move a message between kombu's queue lists and its unacked hash
_MOVES = {"LPUSH", "RPUSH", "HSET", "HDEL", "ZADD", "ZREM"}


@dataclass
class Monitor:
    """Redis ``MONITOR`` while the run lasts (reconnecting across restarts)."""

    redis_url: str
    #: task id -> [(unix time, client, command, key)]
    moves: dict[str, list[tuple[float, str, str, str]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="chaos-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            # a timeout leaves the connection unusable: any error reconnects (a Redis restart)
            try:
                r = redis.Redis.from_url(self.redis_url, socket_timeout=5)
                with r.monitor() as mon:
                    while not self._stop.is_set():
                        self._note(mon.next_command())
            except (redis.RedisError, OSError, AttributeError):
                self._stop.wait(0.05)

    def _note(self, cmd: dict[str, object]) -> None:
        text = str(cmd.get("command", ""))
        verb, _, rest = text.partition(" ")
        if verb.upper() not in _MOVES:
            return
        key = rest.split(" ", 1)[0]
        if not key.startswith((*ALL_QUEUES, "unacked")):
            return
        found = _TASK_ID.search(text.replace('\\"', '"'))
        if found is not None:
            client = f"{cmd.get('client_address')}:{cmd.get('client_port')}"
            when = float(str(cmd.get("time", 0)))
            self.moves[found.group(1)].append((when, client, verb.upper(), key))


def _in_queues(r: redis.Redis[str], task_id: str) -> list[str]:
    where = []
    for key in r.scan_iter(match="haul.*", count=1000):
        if r.type(key) == "list" and any(task_id in item for item in r.lrange(key, 0, -1)):
            where.append(key)
    return where


def _in_unacked(r: redis.Redis[str], task_id: str) -> bool:
    return any(task_id in raw for raw in r.hvals("unacked"))


def trace_lost(
    redis_url: str,
    worker_log: Path,
    lost: list[Execution],
    timeline: list[tuple[float, str]],
    monitor: Monitor | None,
    mono_to_unix: float,
) -> list[str]:
    """Lines that say, for every message of each lost execution, where it is (see module)."""
    if not lost:
        return []
    log = worker_log.read_text(errors="replace") if worker_log.exists() else ""
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    lines = []
    try:
        for ex in lost:
            for task, task_id, sent_at in ex.sent:
                queues = _in_queues(r, task_id)
                meta = r.get(f"celery-task-meta-{task_id}")
                state = json.loads(meta)["status"] if meta else "none"
                received = sum(1 for line in log.splitlines() if task_id in line)
                after = [(t - sent_at, what) for t, what in timeline if t >= sent_at - 0.5]
                near = ", ".join(f"{dt * 1000:+.0f} ms {what}" for dt, what in after[:3])
                lines.append(
                    f"{ex.execution_id} {task} {task_id}: in queue {queues or 'no'}, "
                    f"unacked {'yes' if _in_unacked(r, task_id) else 'no'}, state {state}, "
                    f"worker log lines {received}; next: {near or 'nothing'}"
                )
                if monitor is not None:
                    for when, client, verb, key in monitor.moves.get(task_id, []):
                        dt = when - (sent_at + mono_to_unix)
                        lines.append(f"    {dt * 1000:+8.1f} ms  {client:22} {verb} {key}")
    finally:
        r.close()
    return lines
