"""The worker the cost benchmark runs: haul's own app, plus a no-op task and stage timers.

``celery -A bench.costapp worker`` is ``celery -A tasks worker`` with two additions that exist
only for ``bench/cost.py``: the task ``bench.noop`` (the floor: what Celery alone costs on the
same settings), and wrappers that add up the time spent in each stage of a job in each pool
process, written to Redis (``bench:cost:*``) once, when the pool process exits, so the
measurement adds no round trip to the tasks it measures.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import redis
from celery.signals import worker_process_shutdown

import tasks.app
import worker.pipeline.outputs as outputs
import worker.pipeline.prepare as prepare
from worker.events import EventPublisher
from worker.lease import Lease
from worker.pipeline.recording import InputRecorder
from worker.settings import load_settings

KEY = "bench:cost"
_totals: dict[str, float] = defaultdict(float)
_counts: dict[str, int] = defaultdict(int)


def _timed(stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def run(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _totals[stage] += time.perf_counter() - t
            _counts[stage] += 1

    return run


def _install() -> None:
    Lease.acquire = _timed("lease", Lease.acquire)  # type: ignore[method-assign]
    Lease.release = _timed("lease", Lease.release)  # type: ignore[method-assign]
    prepare.plan_input = _timed("planning", prepare.plan_input)
    prepare.download_many = _timed("cache validation and copy", prepare.download_many)
    InputRecorder.record_all = _timed("records", InputRecorder.record_all)  # type: ignore[method-assign]
    prepare.write_inputs_json = _timed("records", prepare.write_inputs_json)
    outputs.hash_file = _timed("output hashing", outputs.hash_file)
    outputs.send = _timed("output upload", outputs.send)
    EventPublisher.publish = _timed("events", EventPublisher.publish)  # type: ignore[method-assign]
    EventPublisher.publish_many = _timed("events", EventPublisher.publish_many)  # type: ignore[method-assign]
    # create_app's task functions look run_task up in tasks.app when they run.
    tasks.app.run_task = _timed("task body", tasks.app.run_task)


settings = load_settings()
_install()
app = tasks.app.create_app(settings)


@app.task(name="bench.noop")
def noop() -> dict[str, str]:
    return {"status": "ok"}


def _flush(**_: Any) -> None:
    if not _counts:
        return
    client = redis.Redis.from_url(settings.redis_url)
    pipe = client.pipeline()
    for stage, total in _totals.items():
        pipe.hincrbyfloat(f"{KEY}:seconds", stage, total)
        pipe.hincrby(f"{KEY}:calls", stage, _counts[stage])
    pipe.execute()


worker_process_shutdown.connect(_flush, weak=False)
