"""Celery's "succeeded in" line shows only the start of a task's summary (tasks/app.py)."""

from __future__ import annotations

from celery.utils.saferepr import saferepr

from tasks.app import RESULT_REPR_MAXSIZE, create_app
from worker.pipeline.jobs import JOBS
from worker.settings import load_settings


def test_every_task_bounds_the_summary_on_its_success_line() -> None:
    app = create_app(load_settings({}))
    summary = {
        "status": "ok",
        "execution_id": "exec-1",
        "inputs": [{"name": f"in/{i}.bin", "size": i, "sha256": "0" * 64} for i in range(50)],
    }
    for job in JOBS:
        task = app.tasks[job.task]
        assert task.resultrepr_maxsize == RESULT_REPR_MAXSIZE
        line = saferepr(summary, task.resultrepr_maxsize)
        assert line.startswith("{'status': 'ok', 'execution_id': 'exec-1'")
        assert len(line) < RESULT_REPR_MAXSIZE + 40 < len(repr(summary))
