"""Celery signal hooks for operating the worker: metrics, health, task context on log lines.

:func:`connect` is called by :func:`tasks.app.create_app`. Everything here runs at Celery's
own lifecycle points, so ``haul worker`` and ``celery -A tasks worker`` behave the same:

- ``celeryd_init`` (main process, before the pool forks): multiprocess metrics folder, the
  ``/metrics`` + ``/healthz`` server on ``metrics_bind`` (a bind that fails stops the worker
  at start, naming the key), the health probes;
- ``task_prerun`` / ``task_postrun`` (in the pool process, on the task's thread): the task
  context bound for every log line, the running gauge and ``haul_task_seconds``;
- ``worker_process_init`` / ``worker_process_shutdown`` (pool process): the series made at
  zero / its live gauges dropped;
- ``worker_shutdown`` (main process): the server stopped and the folder removed (unless it
  was handed to the worker: ``Settings.metrics_dir_given``).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery import Celery
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
Handler = Callable[..., None]


@dataclass
class _Serving:
    server: Any
    health: Any
    metrics_dir: Path
    #: made by this worker (removed at its shutdown), not handed to it
    owned: bool = True


def start_serving(settings: Settings) -> _Serving | None:
    """Metrics folder, health probes and the HTTP server; None when ``metrics_bind`` is empty."""
    if not settings.metrics_bind:
        return None
    from worker.observability.health import Health, probes_for
    from worker.observability.server import MetricsServer

    given = settings.metrics_dir_given
    folder = given or multiproc.prepare(settings.data_dir)
    # The one environment write in haul, here at the worker's start (celeryd_init): only the
    # environment tells prometheus_client where to write, and the pool's children must inherit
    # it, so it is set before the pool forks.
    os.environ[multiproc.ENV] = str(folder)
    health = Health(probes_for(settings.effective_broker_url, settings.redis_url))
    try:
        server = MetricsServer(settings.metrics_bind, folder, health)
    except ConfigError:
        if given is None:
            multiproc.remove(folder)
        raise
    health.start()
    server.start()
    return _Serving(server, health, folder, owned=given is None)


def outcome_of(state: str | None, retval: Any) -> metrics.Outcome | None:
    """success, failure or rejected; None for a task that will run again (RETRY)."""
    if state == "SUCCESS":
        if isinstance(retval, dict) and retval.get("status") == "rejected":
            return "rejected"
        return "success"
    if state == "RETRY":
        return None
    return "failure"


def _message(args: Any, kwargs: Any) -> Any:
    if args and len(args) == 1:
        return args[0]
    return kwargs or None


class _Observer:
    """The hooks of one app; each answers only for that app's worker and tasks."""

    def __init__(self, app: Celery, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.serving: _Serving | None = None
        self.started: dict[str, tuple[str, float]] = {}

    def _mine(self, sender: Any) -> bool:
        return getattr(sender, "app", self.app) is self.app

    def worker_init(self, instance: Any = None, **_: Any) -> None:
        if not self._mine(instance):
            return
        stores = self.settings.all_stores()
        metrics.register_stores({name: cfg.type for name, cfg in stores.items()})
        try:
            self.serving = start_serving(self.settings)
        except ConfigError as exc:
            # Celery logs and swallows a handler's exceptions; the worker must not start.
            print(f"haul worker: configuration error: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(EX_CONFIG) from None

    def worker_ready(self, sender: Any = None, **_: Any) -> None:
        if self.serving is not None and self._mine(sender):
            log.info(
                "metrics and health on http://%s/metrics and /healthz",
                self.serving.server.address,
            )

    def worker_shutdown(self, **_: Any) -> None:
        if self.serving is not None:
            self.serving.server.stop()
            self.serving.health.stop()
            if self.serving.owned:
                multiproc.remove(self.serving.metrics_dir)
            self.serving = None

    def child_start(self, **_: Any) -> None:
        if self.serving is not None:  # inherited through the fork: this app's worker
            metrics.initialize()

    def child_exit(self, **_: Any) -> None:
        if self.serving is not None:
            multiproc.process_exited(os.getpid(), self.serving.metrics_dir)

    def task_start(
        self, task_id: str = "", task: Any = None, args: Any = None, kwargs: Any = None, **_: Any
    ) -> None:
        name = getattr(task, "name", "") or ""
        if not self._mine(task) or not name.startswith("haul."):
            return
        bind_task(name, _message(args, kwargs))
        metrics.task_started(name)
        self.started[task_id] = (name, time.monotonic())

    def task_end(
        self, task_id: str = "", retval: Any = None, state: str | None = None, **_: Any
    ) -> None:
        started = self.started.pop(task_id, None)
        if started is not None:
            name, at = started
            metrics.task_finished(name, outcome_of(state, retval), time.monotonic() - at)
            clear_task()


def connect(app: Celery, settings: Settings) -> object:
    """Connect the hooks weakly, as the app's other handlers; the caller keeps the returned
    object (their owner) alive as long as the app."""
    o = _Observer(app, settings)
    pairs: list[tuple[Any, Handler]] = [
        (celeryd_init, o.worker_init),
        (worker_ready, o.worker_ready),
        (worker_shutdown, o.worker_shutdown),
        (worker_process_init, o.child_start),
        (worker_process_shutdown, o.child_exit),
        (task_prerun, o.task_start),
        (task_postrun, o.task_end),
    ]
    for signal, handler in pairs:
        signal.connect(handler, weak=True)
    return o
