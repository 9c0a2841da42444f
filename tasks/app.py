"""The Celery app, configured from the one settings object read at start."""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import setup_logging, worker_process_shutdown, worker_ready

from tasks.config import celery_config
from worker.logs import configure_logging
from worker.settings import Settings, load_settings

settings: Settings = load_settings()

app = Celery("haul")
app.conf.update(celery_config(settings))


@setup_logging.connect
def _setup_logging(**_: Any) -> None:
    configure_logging(settings.log_format, settings.log_level)


@worker_ready.connect
def _sigterm_requeues(**_: Any) -> None:
    """SIGTERM in the main process takes Celery's cold-shutdown path (as SIGQUIT does).

    That path starts with the soft shutdown (``shutdown_grace_s`` for running tasks to
    finish), then terminates the pool and requeues what is unacknowledged, so a stopped pod
    hands its work on at once instead of holding it until the end (Celery's default warm
    shutdown) or the visibility timeout. Celery's ``REMAP_SIGTERM`` is not used: with it the
    pool's children ignore the very signal the pool then terminates them with.
    """
    import signal

    signal.signal(signal.SIGTERM, signal.getsignal(signal.SIGQUIT))


@worker_process_shutdown.connect
def _close_runtime(**_: Any) -> None:
    from tasks.runner import close_runtime

    close_runtime()


# Register the tasks, and the hooks for metrics, health and log context.
import tasks.handlers  # noqa: E402
import tasks.observe  # noqa: E402, F401
