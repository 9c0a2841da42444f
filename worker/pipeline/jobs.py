"""The contract's jobs, declared: one :class:`Job` each (the protocol is in ``protocol.py``).

Adding a job is one declaration here (and its run function): the Celery app registers every
job of :data:`JOBS` as a task of the same name.
"""

from __future__ import annotations

from typing import Any

from worker.constants import (
    TASK_PREPARE_INPUTS,
    TASK_PURGE,
    TASK_STORE_OUTPUTS,
    TASK_WATCH_OUTPUTS,
)
from worker.models import PrepareInputs, Purge, StoreOutputs, WatchOutputs
from worker.pipeline.outputs import outputs_failed, store_outputs
from worker.pipeline.prepare import inputs_failed, prepare_inputs
from worker.pipeline.protocol import Job, by_execution
from worker.pipeline.purge import purge
from worker.pipeline.watch import watch_outputs

PREPARE_INPUTS = Job(
    task=TASK_PREPARE_INPUTS,
    model=PrepareInputs,
    run=prepare_inputs,
    failed=inputs_failed,
    lease_key=by_execution(TASK_PREPARE_INPUTS),
)
STORE_OUTPUTS = Job(
    task=TASK_STORE_OUTPUTS,
    model=StoreOutputs,
    run=store_outputs,
    failed=outputs_failed,
    lease_key=by_execution(TASK_STORE_OUTPUTS),
)
# The contract has no purge failure event; the task's own result says what went wrong.
PURGE = Job(task=TASK_PURGE, model=Purge, run=purge, failed=None)

# A watch has no failure event either: store_outputs stores whatever it did not.
WATCH_OUTPUTS = Job(
    task=TASK_WATCH_OUTPUTS,
    model=WatchOutputs,
    run=watch_outputs,
    failed=None,
    lease_key=by_execution(TASK_WATCH_OUTPUTS),
    repeats=True,
)

JOBS: tuple[Job[Any], ...] = (PREPARE_INPUTS, STORE_OUTPUTS, PURGE, WATCH_OUTPUTS)
