"""The contract tasks (sections 2 and 9). Each is a thin wrapper around a pipeline job."""

from __future__ import annotations

from functools import partial
from typing import Any

from celery import Task

from tasks.app import app
from tasks.runner import run
from worker.constants import (
    QUEUE_WATCH,
    TASK_PREPARE_INPUTS,
    TASK_PURGE,
    TASK_STORE_OUTPUTS,
    TASK_WATCH_OUTPUTS,
)
from worker.models import PrepareInputs, Purge, StoreOutputs, WatchOutputs
from worker.pipeline.outputs import outputs_failed, store_outputs
from worker.pipeline.prepare import prepare_inputs
from worker.pipeline.purge import purge
from worker.pipeline.watch import watch_outputs

#: the message header naming the watch round that sent a round (worker.pipeline.watch)
WATCH_AFTER_HEADER = "haul_watch_after"


@app.task(name=TASK_PREPARE_INPUTS, bind=True)
def prepare_inputs_task(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
    return run(
        self, TASK_PREPARE_INPUTS, PrepareInputs, prepare_inputs, args, kwargs, "execution_id"
    )


@app.task(name=TASK_STORE_OUTPUTS, bind=True)
def store_outputs_task(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
    return run(
        self,
        TASK_STORE_OUTPUTS,
        StoreOutputs,
        store_outputs,
        args,
        kwargs,
        "execution_id",
        outputs_failed,
    )


@app.task(name=TASK_PURGE, bind=True)
def purge_task(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
    return run(self, TASK_PURGE, Purge, purge, args, kwargs, None)


@app.task(name=TASK_WATCH_OUTPUTS, bind=True)
def watch_outputs_task(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """One round of a watch; a round that is not the last sends the next one."""
    round_id = str(self.request.id)
    after = getattr(self.request, WATCH_AFTER_HEADER, None) or (
        (self.request.headers or {}).get(WATCH_AFTER_HEADER)
    )
    job = partial(watch_outputs, round_id=round_id, after=after)
    result = run(self, TASK_WATCH_OUTPUTS, WatchOutputs, job, args, kwargs, "execution_id")
    if result.get("status") == "watching":
        self.app.send_task(
            TASK_WATCH_OUTPUTS,
            args=list(args),
            kwargs=kwargs,
            queue=QUEUE_WATCH,
            headers={WATCH_AFTER_HEADER: round_id},
        )
    return result
