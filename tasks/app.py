"""The Celery app, built from a settings object: :func:`create_app`.

Nothing happens at import: ``tasks/celery.py`` is the one place that reads the settings and
builds the app that ``celery -A tasks`` runs.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

from celery import Celery, Task
from celery.signals import (
    setup_logging,
    task_rejected,
    worker_process_shutdown,
    worker_ready,
)

from tasks import observe, transport
from tasks.config import celery_config
from tasks.request import RedactedRequest
from tasks.runner import ProcessRuntime, reject_undecodable, run_task
from worker.logs import configure_logging
from worker.pipeline.jobs import JOBS
from worker.pipeline.protocol import Job
from worker.settings import Settings

#: characters of a task's summary on Celery's success log line (Celery's default: 1024)
RESULT_REPR_MAXSIZE = 200


def create_app(settings: Settings) -> Celery:
    """A Celery app configured from ``settings``, with every job of ``JOBS`` as a task."""
    # kombu's Redis channel must not reconnect once closed (a worker exit on a Redis restart)
    transport.install()
    app = Celery("haul", set_as_current=False)
    app.conf.update(celery_config(settings))
    runtime = ProcessRuntime(settings)
    for job in JOBS:
        # max_retries=None here, on the task: Celery reads retry(max_retries=None) as "the
        # task's default" (3), so a copy waiting out a live lease was dropped after three
        # waits, acknowledged, with no outcome event (found by bench/chaos).
        # resultrepr_maxsize: Celery's "succeeded in" line shows the summary's start only
        # (status, execution id); the whole summary stays the task's result. Rendered,
        # redacted and written as JSON, a 580-character summary's line cost 0.16 CPU-ms at
        # Celery's 1024, 0.10 at 200, for characters nobody reads on that line.
        # Request: what Celery's monitoring shows of the message is redacted (tasks/request.py).
        app.task(
            name=job.task,
            bind=True,
            max_retries=None,
            resultrepr_maxsize=RESULT_REPR_MAXSIZE,
            Request=RedactedRequest,
        )(_task_function(job, runtime))
    _connect_signals(app, settings, runtime)
    return app


def _task_function(job: Job[Any], runtime: ProcessRuntime) -> Callable[..., dict[str, Any]]:
    def task(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return run_task(self, job, runtime.get(), args, kwargs)

    task.__name__ = task.__qualname__ = job.task.replace(".", "_")
    task.__doc__ = f"The contract task {job.task} (message {job.model.__name__})."
    return task


def _connect_signals(app: Celery, settings: Settings, runtime: ProcessRuntime) -> None:
    # Celery's signals are process-wide: each handler is kept by the app (weak=False would
    # keep apps alive forever) and answers only for a worker of this app.
    def _setup_logging(**_: Any) -> None:
        configure_logging(settings.log_format, settings.log_level)

    def _sigterm_requeues(sender: Any = None, **_: Any) -> None:
        """SIGTERM in the main process takes Celery's cold-shutdown path (as SIGQUIT does).

        That path starts with the soft shutdown (``shutdown_grace_s`` for running tasks to
        finish), then terminates the pool and requeues what is unacknowledged, so a stopped
        pod hands its work on at once instead of holding it until the end (Celery's default
        warm shutdown) or the visibility timeout. Celery's ``REMAP_SIGTERM`` is not used: with
        it the pool's children ignore the very signal the pool then terminates them with.
        """
        if getattr(sender, "app", app) is app:
            signal.signal(signal.SIGTERM, signal.getsignal(signal.SIGQUIT))

    def _close_runtime(**_: Any) -> None:
        runtime.close()

    def _report_refused(
        sender: Any = None, message: Any = None, exc: BaseException | None = None, **_: Any
    ) -> None:
        """A pickle (or other non-JSON) message is refused undecoded; say so on the stream."""
        if getattr(sender, "app", app) is app:
            reject_undecodable(runtime.get(), message, exc)

    handlers = (
        _setup_logging,
        _sigterm_requeues,
        _close_runtime,
        _report_refused,
        # Metrics, health and the task context on log lines: tasks/observe.py.
        observe.connect(app, settings),
    )
    app.haul_signal_handlers = handlers
    setup_logging.connect(_setup_logging, weak=True)
    worker_ready.connect(_sigterm_requeues, weak=True)
    worker_process_shutdown.connect(_close_runtime, weak=True)
    task_rejected.connect(_report_refused, weak=True)
