"""The three contract tasks (section 2). Each is a thin wrapper around a pipeline job."""

from __future__ import annotations

from typing import Any

from celery import Task

from tasks.app import app
from tasks.runner import run
from worker.constants import TASK_PREPARE_INPUTS, TASK_PURGE, TASK_STORE_OUTPUTS
from worker.models import PrepareInputs, Purge, StoreOutputs
from worker.pipeline.outputs import outputs_failed, store_outputs
from worker.pipeline.prepare import inputs_failed, prepare_inputs
from worker.pipeline.purge import purge


@app.task(name=TASK_PREPARE_INPUTS, bind=True)
def prepare_inputs_task(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
    return run(
        self,
        TASK_PREPARE_INPUTS,
        PrepareInputs,
        prepare_inputs,
        args,
        kwargs,
        "execution_id",
        inputs_failed,
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
