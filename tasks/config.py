"""Celery configuration derived from haul's settings; importing this has no side effects."""

from __future__ import annotations

from typing import Any

from kombu.entity import Exchange, Queue

from worker.constants import ALL_QUEUES, QUEUE_CONTROL, TASK_QUEUES
from worker.settings import Settings

AMQP_SCHEMES = ("amqp://", "amqps://", "pyamqp://")


def is_amqp(broker_url: str) -> bool:
    return broker_url.startswith(AMQP_SCHEMES)


def _queues(amqp: bool) -> list[Queue]:
    """Each queue on its own direct exchange with its own name as routing key: what a plain
    ``send_task(..., queue="haul.inputs")`` from any Celery client publishes to. On RabbitMQ
    they are quorum queues (replicated, and a message survives a broker node's restart)."""
    args = {"x-queue-type": "quorum"} if amqp else None
    return [
        Queue(name, Exchange(name, type="direct"), routing_key=name, queue_arguments=args)
        for name in ALL_QUEUES
    ]


def _transport_options(s: Settings, amqp: bool) -> dict[str, Any]:
    if amqp:
        # A publish returns once RabbitMQ has the message: a crash right after a send loses
        # nothing. An unacknowledged message returns when its consumer's connection closes,
        # so there is no visibility timeout to tune.
        return {"confirm_publish": True}
    vt = s.broker_visibility_timeout_s
    return {
        "visibility_timeout": vt,
        # kombu scans for unacked messages only every interval * throttle seconds
        # (10 * 10 by default); scan often enough that a dead worker's message comes back
        # within about the visibility timeout.
        "unacked_restore_interval": max(1, min(10, vt // 10)),
        "unacked_restore_throttle": 1,
        "unacked_mutex_expire": max(10, min(300, vt // 2)),
    }


def celery_config(s: Settings) -> dict[str, Any]:
    vt = s.broker_visibility_timeout_s
    amqp = is_amqp(s.effective_broker_url)
    return {
        # Change memory, datum index, leases, events and results stay in redis_url (section 11).
        "broker_url": s.effective_broker_url,
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
        "task_queues": _queues(amqp),
        # A queue a client names that haul does not know (RabbitMQ): quorum like haul's own.
        "task_create_missing_queue_type": "quorum" if amqp else "classic",
        "task_default_exchange": QUEUE_CONTROL,
        "task_default_routing_key": QUEUE_CONTROL,
        # Only the queue: `send_task(..., queue=...)` must still be able to pick another one.
        "task_routes": {name: {"queue": queue} for name, queue in TASK_QUEUES.items()},
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": _transport_options(s, amqp),
        "result_backend_transport_options": {"visibility_timeout": vt},
        # SIGTERM (remapped to a cold shutdown by `haul worker`) first waits this long for
        # running tasks, then requeues them: a soft shutdown.
        "worker_soft_shutdown_timeout": s.shutdown_grace_s,
        "worker_hijack_root_logger": False,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        # Flower and `celery events` see haul's tasks: names, states, runtimes (section 11).
        "worker_send_task_events": s.task_events,
        "task_send_sent_event": s.task_events,
        "worker_concurrency": s.worker_concurrency,
    }
