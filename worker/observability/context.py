"""The task context on every log line: ``execution_id``, ``project_id``, ``task``.

Bound with contextvars when a task starts and cleared when it ends. A new thread starts with
an empty context, so every place in haul that starts a thread or submits to a pool wraps the
callable with :func:`in_current_context`, which runs it in a copy of the caller's context.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Mapping
from typing import Any, Final, ParamSpec, TypeVar

import structlog

P = ParamSpec("P")
T = TypeVar("T")
TASK_KEYS: Final = ("execution_id", "project_id", "task")


def bind_task(task: str, message: Any) -> None:
    """Bind the task name and, when the message names them, its execution and project."""
    fields: dict[str, Any] = {"task": task}
    if isinstance(message, Mapping):
        for key in ("execution_id", "project_id"):
            value = message.get(key)
            if isinstance(value, str):
                fields[key] = value[:128]
    structlog.contextvars.bind_contextvars(**fields)


def clear_task() -> None:
    structlog.contextvars.unbind_contextvars(*TASK_KEYS)


def in_current_context(fn: Callable[P, T]) -> Callable[P, T]:
    """``fn`` running in the context of the caller, as it is now.

    Each call runs in its own copy (a Context cannot be entered by two threads at once), so
    the result may go to ``pool.map`` or be started on several threads.
    """
    ctx = contextvars.copy_context()

    def run(*args: P.args, **kwargs: P.kwargs) -> T:
        return ctx.copy().run(fn, *args, **kwargs)

    return run
