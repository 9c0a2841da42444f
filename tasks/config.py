"""Celery configuration derived from haul's settings; importing this has no side effects."""

from __future__ import annotations

from typing import Any

from kombu.entity import Exchange, Queue

from worker.constants import ALL_QUEUES, QUEUE_CONTROL, TASK_QUEUES
from worker.settings import Settings


def celery_config(s: Settings) -> dict[str, Any]:
    vt = s.broker_visibility_timeout_s
    return {
        "broker_url": s.redis_url,
        "result_backend": s.redis_url,
        "result_expires": 7 * 24 * 3600,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        "task_time_limit": s.task_time_limit_s,
        "task_soft_time_limit": max(s.task_time_limit_s - 60, 30),
        "task_track_started": True,
        "task_default_queue": QUEUE_CONTROL,
        # Each queue on its own direct exchange with its own name as routing key: what a
        # plain `send_task(..., queue="haul.inputs")` from any Celery client publishes to.
        "task_queues": [
            Queue(name, Exchange(name, type="direct"), routing_key=name) for name in ALL_QUEUES
        ],
        "task_default_exchange": QUEUE_CONTROL,
        "task_default_routing_key": QUEUE_CONTROL,
        # Only the queue: `send_task(..., queue=...)` must still be able to pick another one.
        "task_routes": {name: {"queue": queue} for name, queue in TASK_QUEUES.items()},
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {
            "visibility_timeout": vt,
            # kombu scans for unacked messages only every interval * throttle seconds
            # (10 * 10 by default); scan often enough that a dead worker's message comes back
            # within about the visibility timeout.
            "unacked_restore_interval": max(1, min(10, vt // 10)),
            "unacked_restore_throttle": 1,
            "unacked_mutex_expire": max(10, min(300, vt // 2)),
        },
        "result_backend_transport_options": {"visibility_timeout": vt},
        # SIGTERM (remapped to a cold shutdown by `haul worker`) first waits this long for
        # running tasks, then requeues them: a soft shutdown.
        "worker_soft_shutdown_timeout": s.shutdown_grace_s,
        "worker_hijack_root_logger": False,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "worker_send_task_events": False,
        "worker_concurrency": s.worker_concurrency,
    }
