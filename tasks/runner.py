"""The Celery side of the task boundary: the message, the execution's lease, one Runtime.

What a job does and how its outcome is published is the job protocol
(:mod:`worker.pipeline.protocol`); this module adds what only a Celery task has: the raw
arguments, the rejection of a message that cannot be used, the lease (a held one retries the
message later), and one :class:`Runtime` per worker process.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from worker.constants import EV_MESSAGE_REJECTED, TASK_QUEUES
from worker.errors import LeaseHeld, MessageError
from worker.lease import Lease
from worker.models import ID_PATTERN, FieldProblem, MessageRejected, validate_message
from worker.pipeline.protocol import REPEAT_STATUS, Delivery, Job, execute, with_delivery
from worker.pipeline.runtime import Runtime
from worker.settings import Settings

if TYPE_CHECKING:
    from celery import Task

log = logging.getLogger("haul.tasks")
ID_RE = re.compile(ID_PATTERN)
#: the message header naming the round that sent a round (jobs declared ``repeats``)
SENT_BY_HEADER = "haul_sent_by"


class ProcessRuntime:
    """One :class:`Runtime` per process, built on first use after the prefork pool forked
    (a Redis connection or a thread pool must never be shared across a fork)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._runtime: tuple[int, Runtime] | None = None

    def get(self) -> Runtime:
        if self._runtime is None or self._runtime[0] != os.getpid():
            self._runtime = (os.getpid(), Runtime.from_settings(self.settings))
        return self._runtime[1]

    def close(self) -> None:
        if self._runtime is not None and self._runtime[0] == os.getpid():
            self._runtime[1].close()
        self._runtime = None


def message_from(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The task takes one JSON object, positionally or as keyword arguments."""
    if len(args) == 1 and not kwargs:
        return args[0]
    if not args and kwargs:
        return kwargs
    return list(args) if args else None


def _digest(payload: Any) -> str:
    try:
        text = json.dumps(payload, sort_keys=True, default=str)
    except (TypeError, ValueError):
        text = repr(payload)
    return hashlib.sha256(text.encode()).hexdigest()


def _check_store(rt: Runtime, msg: Any) -> None:
    """A ``store`` the settings do not declare makes the message unusable (not a failure)."""
    name = getattr(msg, "store", None)
    stores = rt.settings.all_stores()
    if name is not None and name not in stores:
        problem = f"unknown store {name!r}; declared: {', '.join(sorted(stores))}"
        raise MessageError(f"store: {problem}", [{"field": "store", "problem": problem}])


def reject(rt: Runtime, task_name: str, payload: Any, exc: MessageError) -> dict[str, Any]:
    log.warning("rejected %s message: %s", task_name, exc)
    execution = payload.get("execution_id") if isinstance(payload, dict) else None
    rt.events.publish(
        EV_MESSAGE_REJECTED,
        execution if isinstance(execution, str) and ID_RE.fullmatch(execution) else None,
        MessageRejected(
            task=task_name,
            reason=str(exc),
            errors=[FieldProblem(**e) for e in exc.errors],
        ),
        task_name,
        _digest(payload),
    )
    return {"status": "rejected", "task": task_name, "reason": str(exc), "errors": exc.errors}


def reject_undecodable(rt: Runtime, message: Any, exc: BaseException | None) -> None:
    """A message the worker would not decode (pickle, YAML, an unknown format): Celery drops
    it without running anything; this publishes ``haul.message.rejected`` so the sender hears
    why. It runs in the worker's main process, where such messages are refused."""
    headers = getattr(message, "headers", None) or {}
    task_name = str(headers.get("task") or "")
    content_type = str(getattr(message, "content_type", None) or "unknown")
    problem = (
        f"content type {content_type!r} is not accepted: haul takes JSON messages only"
        if exc is not None
        else "not a Celery task message"
    )
    error = MessageError(problem, [{"field": "", "problem": problem}])
    log.warning("rejected a %s message: %s", task_name or "task", error)
    body = getattr(message, "body", b"") or b""
    raw = body if isinstance(body, bytes) else str(body).encode()
    identity = str(headers.get("id") or hashlib.sha256(raw).hexdigest())
    try:
        rt.events.publish(
            EV_MESSAGE_REJECTED,
            None,
            MessageRejected(
                task=task_name,
                reason=str(error),
                errors=[FieldProblem(**e) for e in error.errors],
            ),
            task_name,
            identity,
        )
    except RedisError:
        log.exception("could not publish the rejection of a %s message", task_name or "task")


def run_task(
    task: Task,
    job: Job[Any],
    rt: Runtime,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> dict[str, Any]:
    """Validate, hold the lease, :func:`execute` the job: its summary, or its failure raised
    after the failure event was published."""
    payload = message_from(args, kwargs)
    try:
        msg = validate_message(job.model, payload)
        _check_store(rt, msg)
    except MessageError as exc:
        return reject(rt, job.task, payload, exc)
    if job.lease_key is None:
        return execute(rt, job, msg)
    lease = Lease(rt.redis, job.lease_key(msg), rt.settings.lease_ttl_s)
    try:
        lease.acquire()
    except LeaseHeld as exc:
        log.info("%s; retrying in %d s", exc, rt.settings.lease_retry_s)
        # no limit: the task is registered with max_retries=None (tasks/app.py); the holder
        # either finishes or dies and its lease lapses within lease_ttl_s
        raise task.retry(countdown=rt.settings.lease_retry_s) from None
    try:
        # The lease goes back in the round trip of the final event (or the failure event);
        # release() below gives it back only when that did not happen.
        if not job.repeats:
            return execute(rt, job, msg, lease.lost, riders=[lease])
        delivery = _delivery(task)
        summary = with_delivery(delivery, lambda: execute(rt, job, msg, lease.lost, [lease]))
    finally:
        lease.release()
    if summary.get("status") == REPEAT_STATUS:
        # Sent after the lease is released, so the next round can take it at once.
        task.app.send_task(
            job.task,
            args=list(args),
            kwargs=kwargs,
            queue=TASK_QUEUES[job.task],
            headers={SENT_BY_HEADER: delivery.message_id},
        )
    return summary


def _delivery(task: Task) -> Delivery:
    request = task.request
    sent_by = getattr(request, SENT_BY_HEADER, None) or (request.headers or {}).get(SENT_BY_HEADER)
    return Delivery(str(request.id), sent_by)
