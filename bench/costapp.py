"""The worker the cost benchmark runs: haul's own app, plus a no-op task and stage timers.

``celery -A bench.costapp worker`` is ``celery -A tasks worker`` with additions that exist
only for ``bench/cost.py``: the task ``bench.noop`` (the floor: what Celery alone costs on the
same settings), the task ``bench.datawork`` (an execution's data work alone, done by haul's own
functions: the cached input copied into place, the output hashed three ways while its store copy
is written, compared, flushed and linked; no message, lease, record, event or Redis), and
wrappers that add up the time spent in each stage of a job in each pool process, written to
Redis (``bench:cost:*``) once, when the pool process exits, so the measurement adds no round
trip to the tasks it measures.

With ``BENCH_COST_TRIPS=1`` in the worker's environment (``python -m bench.cost --trips``) it
also counts every Redis round trip the pool processes make, by the haul function that made it
(the innermost frame in ``worker/`` or ``tasks/``, else Celery's) and its commands: the map of
what an execution asks Redis. The counting walks the stack on every call, so it is off for the
timed runs. With ``BENCH_COST_PROFILE=<folder>`` each pool process runs under cProfile and
writes ``<folder>/<pid>.prof`` when it exits (for a look with ``pstats``, not for figures).
"""

from __future__ import annotations

import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from celery.signals import worker_process_init, worker_process_shutdown
from redis.client import Pipeline

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
_trips: dict[str, int] = defaultdict(int)
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_OURS = tuple(os.path.join(_ROOT, d) + os.sep for d in ("worker", "tasks"))


def _timed(stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def run(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _totals[stage] += time.perf_counter() - t
            _counts[stage] += 1

    return run


def _caller() -> str:
    """The innermost haul frame (module:function) of the current call, else Celery's."""
    frame = sys._getframe(2)
    outer = "?"
    while frame is not None:
        name = frame.f_code.co_filename
        if name.startswith(_OURS):
            return f"{name[len(_ROOT) + 1 : -3].replace(os.sep, '.')}:{frame.f_code.co_name}"
        if outer == "?" and ("celery" in name or "kombu" in name):
            outer = f"celery:{frame.f_code.co_name}"
        frame = frame.f_back
    return outer


def _count_trips() -> None:
    """Count each round trip: a command sent alone, or a pipeline sent at once."""
    single = redis.Redis.execute_command
    immediate = Pipeline.immediate_execute_command
    execute = Pipeline.execute

    def one(self: Any, *args: Any, **options: Any) -> Any:
        _trips[f"{_caller()} {args[0]}"] += 1
        return single(self, *args, **options)

    def now(self: Any, *args: Any, **options: Any) -> Any:
        _trips[f"{_caller()} {args[0]}"] += 1
        return immediate(self, *args, **options)

    def many(self: Any, *args: Any, **kwargs: Any) -> Any:
        names = [str(c[0][0]) for c in self.command_stack]
        if names:
            shown = " ".join(dict.fromkeys(names))
            multi = "MULTI " if self.transaction else ""
            _trips[f"{_caller()} {multi}[{shown}]"] += 1
        return execute(self, *args, **kwargs)

    redis.Redis.execute_command = one  # type: ignore[method-assign]
    Pipeline.immediate_execute_command = now  # type: ignore[method-assign]
    Pipeline.execute = many  # type: ignore[method-assign]


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
if os.environ.get("BENCH_COST_TRIPS") == "1":
    _count_trips()
app = tasks.app.create_app(settings)


@app.task(name="bench.noop")
def noop() -> dict[str, str]:
    return {"status": "ok"}


_stores: dict[str, Any] = {}


@app.task(name="bench.datawork")
def datawork(execution_id: str, part: str, cached: str = "") -> dict[str, str]:
    """``part`` "in": copy the file ``cached`` (a cache entry's data) to the execution's input
    path, as a cache hit does; "out": hash and store its 1 MB output, as store_outputs does."""
    from worker.records.datums import content_key
    from worker.transfer.cache import _private_copy
    from worker.transfer.config import TransferConfig
    from worker.transfer.upload import hash_file, send

    folder = settings.executions_dir / execution_id
    if part == "in":
        dest = folder / "inputs" / "x" / "input.bin"
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        _private_copy(Path(cached), tmp)
        os.replace(tmp, dest)
        return {"status": "ok"}
    if "store" not in _stores:
        from worker.stores.resolver import Sources

        _stores["store"] = Sources(settings).store(settings.default_store)
        _stores["cfg"] = TransferConfig.from_settings(settings)
    store, cfg = _stores["store"], _stores["cfg"]
    path = folder / "outputs" / "model.bin"
    hashed = hash_file(path, cfg, store)
    try:
        key = content_key(store.prefix, "bench", hashed.digests.sha256, path.name)
        send(store, hashed, key, cfg)
    finally:
        hashed.discard()
    return {"status": "ok"}


_profile: Any = None


def _child_start(**_: Any) -> None:
    global _profile
    _trips.clear()  # what the main process counted before the fork is not the pool's
    folder = os.environ.get("BENCH_COST_PROFILE")
    if folder:
        import cProfile

        _profile = cProfile.Profile(time.process_time)  # CPU, not the waits
        _profile.enable()


def _flush(**_: Any) -> None:
    if _profile is not None:
        _profile.disable()
        _profile.dump_stats(os.path.join(os.environ["BENCH_COST_PROFILE"], f"{os.getpid()}.prof"))
    if not _counts:
        return
    client = redis.Redis.from_url(settings.redis_url)
    pipe = client.pipeline()
    for stage, total in _totals.items():
        pipe.hincrbyfloat(f"{KEY}:seconds", stage, total)
        pipe.hincrby(f"{KEY}:calls", stage, _counts[stage])
    for where, n in _trips.items():
        pipe.hincrby(f"{KEY}:trips", where, n)
    pipe.execute()


worker_process_init.connect(_child_start, weak=False)
worker_process_shutdown.connect(_flush, weak=False)
