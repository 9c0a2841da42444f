"""Celery signal hooks for operating the worker: metrics, health, task context on log lines.

Connected by importing this module from the app. Everything here runs at Celery's own
lifecycle points, so ``haul worker`` and ``celery -A tasks worker`` behave the same:

- ``celeryd_init`` (main process, before the pool forks): multiprocess metrics folder, the
  ``/metrics`` + ``/healthz`` server on ``metrics_bind`` (a bind that fails stops the worker
  at start, naming the key), the health probes;
- ``task_prerun`` / ``task_postrun`` (in the pool process, on the task's thread): the task
  context bound for every log line, the running gauge and ``haul_task_seconds``;
- ``worker_process_init`` / ``worker_process_shutdown`` (pool process): the series made at
  zero / its live gauges dropped;
- ``worker_shutdown`` (main process): the server stopped and the folder removed.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery.signals import (
    celeryd_init,
    task_postrun,
    task_prerun,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)

from worker.errors import ConfigError
from worker.observability import metrics, multiproc
from worker.observability.context import bind_task, clear_task
from worker.settings import Settings

log = logging.getLogger("haul.worker")
EX_CONFIG = 78  # sysexits.h: a configuration error


@dataclass
class _Serving:
    server: Any
    health: Any
    metrics_dir: Path


_serving: _Serving | None = None
_started: dict[str, tuple[str, float]] = {}


def _settings() -> Settings:
    from tasks.app import settings

    return settings


def start_serving(settings: Settings) -> _Serving | None:
    """Metrics folder, health probes and the HTTP server; None when ``metrics_bind`` is empty."""
    if not settings.metrics_bind:
        return None
    from worker.observability.health import Health, probes_for
    from worker.observability.server import MetricsServer

    folder = multiproc.prepare(settings.data_dir)
    health = Health(probes_for(settings.effective_broker_url, settings.redis_url))
    try:
        server = MetricsServer(settings.metrics_bind, folder, health)
    except ConfigError:
        multiproc.remove(folder)
        raise
    health.start()
    server.start()
    return _Serving(server, health, folder)


@celeryd_init.connect
def _on_worker_init(**_: Any) -> None:
    global _serving
    settings = _settings()
    metrics.register_stores({name: cfg.type for name, cfg in settings.all_stores().items()})
    try:
        _serving = start_serving(settings)
    except ConfigError as exc:
        # Celery logs and swallows a handler's exceptions; the worker must not start.
        print(f"haul worker: configuration error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(EX_CONFIG) from None


@worker_ready.connect
def _say_where(**_: Any) -> None:
    if _serving is not None:
        log.info(
            "metrics and health on http://%s/metrics and /healthz",
            _serving.server.address,
        )


@worker_shutdown.connect
def _on_worker_shutdown(**_: Any) -> None:
    global _serving
    if _serving is not None:
        _serving.server.stop()
        _serving.health.stop()
        multiproc.remove(_serving.metrics_dir)
        _serving = None


@worker_process_init.connect
def _on_child_start(**_: Any) -> None:
    metrics.initialize()


@worker_process_shutdown.connect
def _on_child_exit(**_: Any) -> None:
    folder = os.environ.get(multiproc.ENV)
    if folder:
        multiproc.process_exited(os.getpid(), Path(folder))


def _message(args: Any, kwargs: Any) -> Any:
    if args and len(args) == 1:
        return args[0]
    return kwargs or None


@task_prerun.connect
def _on_task_start(
    task_id: str = "", task: Any = None, args: Any = None, kwargs: Any = None, **_: Any
) -> None:
    name = getattr(task, "name", "") or ""
    if not name.startswith("haul."):
        return
    bind_task(name, _message(args, kwargs))
    metrics.task_started(name)
    _started[task_id] = (name, time.monotonic())


def outcome_of(state: str | None, retval: Any) -> metrics.Outcome | None:
    """success, failure or rejected; None for a task that will run again (RETRY)."""
    if state == "SUCCESS":
        if isinstance(retval, dict) and retval.get("status") == "rejected":
            return "rejected"
        return "success"
    if state == "RETRY":
        return None
    return "failure"


@task_postrun.connect
def _on_task_end(task_id: str = "", retval: Any = None, state: str | None = None, **_: Any) -> None:
    started = _started.pop(task_id, None)
    if started is not None:
        name, at = started
        metrics.task_finished(name, outcome_of(state, retval), time.monotonic() - at)
    clear_task()
