"""The task boundary: validation, the execution lease, and failures turned into events.

This is the one place where a broad ``except`` is allowed: whatever goes wrong in a job becomes
an event with a code and a message, and the task ends with a JSON summary or a failure.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
from collections.abc import Callable
from typing import Any

from celery import Task
from redis.exceptions import RedisError

from worker.constants import EV_MESSAGE_REJECTED
from worker.errors import (
    HaulError,
    InternalError,
    LeaseHeld,
    MessageError,
    ReportedFailure,
)
from worker.lease import Lease
from worker.logs import redact_text
from worker.models import ID_PATTERN, FieldProblem, MessageRejected, validate_message
from worker.pipeline.runtime import Runtime

log = logging.getLogger("haul.tasks")
ID_RE = re.compile(ID_PATTERN)
_runtime: tuple[int, Runtime] | None = None


def runtime() -> Runtime:
    """One Runtime per process (created after the prefork pool forks, never shared)."""
    global _runtime
    if _runtime is None or _runtime[0] != os.getpid():
        from tasks.app import settings

        _runtime = (os.getpid(), Runtime.from_settings(settings))
    return _runtime[1]


def close_runtime() -> None:
    global _runtime
    if _runtime is not None and _runtime[0] == os.getpid():
        _runtime[1].close()
    _runtime = None


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


def reject_undecodable(message: Any, exc: BaseException | None) -> None:
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
        runtime().events.publish(
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


def run(
    task: Task,
    task_name: str,
    model: Any,
    job: Callable[[Runtime, Any, threading.Event | None], dict[str, Any]],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    lease_on: str | None,
    on_failure: Callable[[Runtime, Any, HaulError], None] | None = None,
) -> dict[str, Any]:
    """Validate, hold the execution's lease, run ``job``; ``on_failure`` publishes the job's
    failure event for errors the job did not foresee (the job reports its own HaulErrors)."""
    rt = runtime()
    payload = message_from(args, kwargs)
    try:
        msg = validate_message(model, payload)
        _check_store(rt, msg)
    except MessageError as exc:
        return reject(rt, task_name, payload, exc)
    lease: Lease | None = None
    if lease_on is not None:
        lease = Lease(rt.redis, f"{task_name}:{getattr(msg, lease_on)}", rt.settings.lease_ttl_s)
        try:
            lease.acquire()
        except LeaseHeld as exc:
            log.info("%s; retrying in %d s", exc, rt.settings.lease_retry_s)
            raise task.retry(countdown=rt.settings.lease_retry_s, max_retries=None) from None
    try:
        return job(rt, msg, lease.lost if lease is not None else None)
    except ReportedFailure:
        raise
    except HaulError as exc:
        if on_failure is not None:
            on_failure(rt, msg, exc)
        raise
    except RedisError as exc:
        log.exception("Redis failed during %s", task_name)
        raise HaulError(f"Redis is unavailable: {type(exc).__name__}") from None
    except Exception as exc:  # the task boundary: every failure becomes an event
        log.exception("%s failed unexpectedly", task_name)
        error = InternalError(f"{type(exc).__name__}: {redact_text(str(exc))}")
        if on_failure is not None:
            try:
                on_failure(rt, msg, error)
            except RedisError:
                log.exception("could not publish the failure of %s", task_name)
        raise error from None
    finally:
        if lease is not None:
            lease.release()
