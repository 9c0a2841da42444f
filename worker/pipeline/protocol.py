"""The job protocol: what a contract task is, and the one function that runs any of them.

A :class:`Job` is a declaration (``worker/pipeline/jobs.py`` holds them all): the message
model, the lease key, the run function, the failure event and, through :class:`Outcome`, the
summary and the final event. :func:`execute` is the only place that publishes a job's
outcome, so no job can end without one:

- the run function returns an :class:`Outcome`; ``execute`` publishes its final event
  (``haul.inputs.ready``, ``haul.outputs.stored``) and returns its summary;
- any exception becomes the job's failure event: a :class:`HaulError` with its own code,
  anything else as ``internal_error``, a Redis error as ``redis_unavailable`` (publishing
  is still tried: Redis may be back, or only one command may have failed);
- :class:`LeaseLost` is the one exception without an event: another worker holds the execution
  now, and that copy publishes the outcome.

``execute`` knows nothing about Celery; :mod:`tasks.runner` adds validation, the lease and the
retry of a held lease around it. A job declared ``repeats`` (the live-outputs watch) runs in
rounds: a summary whose ``status`` is ``watching`` makes the runner send the same message again
as the next round, and :func:`current_delivery` tells the running round which message it is and
which round sent it (so a redelivered old round can tell it was superseded).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel
from redis.exceptions import RedisError

from worker.errors import HaulError, InternalError, LeaseLost, RedisUnavailable
from worker.events import Pending, Rider
from worker.logs import redact_text
from worker.pipeline.runtime import Runtime

log = logging.getLogger("haul.tasks")
M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class Outcome:
    """What a job that ended well hands back: its JSON summary and its final event."""

    summary: dict[str, Any]
    #: published by :func:`execute` before the summary is returned; None for a job without one
    event: Pending | None = None


@dataclass(frozen=True)
class Delivery:
    """The broker message running a job: its id, and the id of the round that sent it."""

    message_id: str
    #: None for a message an orchestrator sent
    sent_by: str | None = None


_DELIVERY: ContextVar[Delivery | None] = ContextVar("haul_delivery", default=None)


def current_delivery() -> Delivery | None:
    """The message the job runs for (set by the runner for jobs declared ``repeats``)."""
    return _DELIVERY.get()


def with_delivery(delivery: Delivery, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    token = _DELIVERY.set(delivery)
    try:
        return fn()
    finally:
        _DELIVERY.reset(token)


#: the summary ``status`` of a round after which the runner sends the next round
REPEAT_STATUS = "watching"


@dataclass(frozen=True)
class Job(Generic[M]):
    """One contract task, declared."""

    #: the Celery task name (``haul.prepare_inputs``...)
    task: str
    #: the message model the payload must validate against
    model: type[M]
    #: does the work; ``lease_lost`` is set when another worker took the execution over
    run: Callable[[Runtime, M, threading.Event | None], Outcome]
    #: the event that says the job failed (and the job's own cleanup after a failure);
    #: None only for a job whose contract has no failure event
    failed: Callable[[Runtime, M, HaulError], Pending] | None
    #: the lease that keeps two copies of one job from running at once; None: no lease
    lease_key: Callable[[M], str] | None = None
    #: runs in rounds: a summary with ``status`` :data:`REPEAT_STATUS` is sent again
    repeats: bool = False


def by_execution(task: str) -> Callable[[Any], str]:
    """The usual lease: one running copy of ``task`` per execution."""

    def key(msg: Any) -> str:
        return f"{task}:{msg.execution_id}"

    return key


def as_haul_error(exc: BaseException) -> HaulError:
    """The error a failure is reported as (event and task result): haul's own, or internal."""
    if isinstance(exc, HaulError):
        return exc
    if isinstance(exc, RedisError):
        return RedisUnavailable(f"Redis is unavailable: {type(exc).__name__}")
    return InternalError(f"{type(exc).__name__}: {redact_text(str(exc))}")


def execute(
    runtime: Runtime,
    job: Job[M],
    msg: M,
    lease_lost: threading.Event | None = None,
    riders: Sequence[Rider] = (),
) -> dict[str, Any]:
    """Run ``job`` for a valid ``msg``; publish its final or its failure event; the summary.

    The final (or failure) event goes out in one round trip with everything the job deferred
    (:meth:`EventPublisher.defer`) and ``riders`` (the runner's lease release). Raises the
    failure (as a :class:`HaulError`) after its event was published.
    """
    try:
        outcome = job.run(runtime, msg, lease_lost)
        if outcome.event is not None:
            runtime.events.publish(*_publish_args(outcome.event), riders=riders)
        else:
            runtime.events.flush(riders)
    except LeaseLost:
        # The new holder publishes the same facts (the same ids); nothing of this copy's.
        runtime.events.drop_deferred()
        raise
    except Exception as exc:  # the task boundary: every failure becomes an event
        error = as_haul_error(exc)
        if error is exc:
            log.warning("%s failed: %s: %s", job.task, error.code, error)
        else:
            log.exception("%s failed unexpectedly", job.task)
        _report(runtime, job, msg, error, riders)
        if error is exc:
            raise
        raise error from None
    return outcome.summary


def _report(
    runtime: Runtime, job: Job[M], msg: M, error: HaulError, riders: Sequence[Rider]
) -> None:
    try:
        if job.failed is None:
            runtime.events.flush(riders)
        else:
            runtime.events.publish(*_publish_args(job.failed(runtime, msg, error)), riders=riders)
    except Exception:  # the failure is still raised; a lost event must not hide it
        log.exception("could not publish the failure of %s", job.task)
    finally:
        # Whatever could not be sent must not go out with the next job's events.
        if dropped := runtime.events.drop_deferred():
            log.warning("%d deferred records of %s were not published", dropped, job.task)


def _publish_args(event: Pending) -> tuple[Any, ...]:
    kind, subject, data, identity = event
    return (kind, subject, data, *identity)
