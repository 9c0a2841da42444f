"""The task context on every log line: ``execution_id``, ``project_id``, ``task``.

Bound with contextvars when a task starts and cleared when it ends. A new thread starts with
an empty context, so every place in haul that starts a thread or submits to a pool wraps the
callable with :func:`in_current_context`, which runs it in a copy of the caller's context.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any, Final, ParamSpec, TypeVar

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
    _contextvars().bind_contextvars(**fields)


def clear_task() -> None:
    _contextvars().unbind_contextvars(*TASK_KEYS)


def _contextvars() -> ModuleType:
    """structlog's contextvars module, imported when a task first binds its context.

    The transfer engine imports this module for :func:`in_current_context` alone; importing
    structlog (with rich, which its dev console pulls in) there cost ``haul fetch`` about
    50 ms of every start, a fifth of its start-up. The worker imports it anyway (worker.logs).
    """
    import structlog.contextvars

    return structlog.contextvars


def in_current_context(fn: Callable[P, T]) -> Callable[P, T]:
    """``fn`` running in the context of the caller, as it is now.

    Each call runs in its own copy (a Context cannot be entered by two threads at once), so
    the result may go to ``pool.map`` or be started on several threads.
    """
    ctx = contextvars.copy_context()

    def run(*args: P.args, **kwargs: P.kwargs) -> T:
        return ctx.copy().run(fn, *args, **kwargs)

    return run
