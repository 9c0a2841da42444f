"""The worker's own log: readable ``key=value`` lines for people, JSON lines for machines.

One structlog pipeline for everything: haul's stdlib loggers, Celery's records and structlog
loggers all pass the same processors (contract section 11):

- the task context bound with contextvars (``execution_id``, ``project_id``, ``task``: see
  :mod:`worker.observability.context`) is merged into every line, in the worker and in the
  threads it starts with that context copied;
- redaction runs last before rendering, over the message, every string field and the
  traceback, so a URL with userinfo or a presigned query string never reaches a log line,
  whoever logged it. httpx logs each request URL at INFO; its loggers are set to WARNING, and
  redaction covers them anyway.
"""

from __future__ import annotations

import logging
import re
import sys
import traceback
from io import StringIO
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, ExcInfo, Processor, WrappedLogger

from worker.errors import SHOWN_MAX_CHARS, bounded
from worker.stores import registry
from worker.urls import redact_url

#: every URL a line may hold: http(s), each store type's scheme (the registry's list), and
#: the broker URLs Celery names in its own lines
_SCHEMES = "|".join(
    ["https?", "rediss?", "amqps?", *(re.escape(t.scheme) for t in registry.STORE_TYPES)]
)
_URL = re.compile(rf"\b(?:{_SCHEMES})://[^\s'\"<>]+")
#: a log line's message (or one field) may quote one bounded message and its context; the
#: redaction step also cuts (worker.errors.bounded), whoever logged it: Celery's own lines
#: echo task results
LOG_MAX_CHARS = 4 * SHOWN_MAX_CHARS


def redact_text(text: str) -> str:
    return _URL.sub(lambda m: redact_url(m.group(0)), text)


class RedactingFilter(logging.Filter):
    """For handlers outside the structlog pipeline (a test's caplog, an embedding program)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            try:
                record.msg = record.getMessage()
            except (TypeError, ValueError):
                record.msg = str(record.msg)
            record.args = None
        record.msg = bounded(redact_text(str(record.msg)), LOG_MAX_CHARS)
        return True


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return bounded(redact_text(value), LOG_MAX_CHARS)
    if isinstance(value, dict):
        return {k: _redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(v) for v in value]
    return value


def redact(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """structlog processor: redact every string the line would show."""
    for key, value in event_dict.items():
        if not key.startswith("_") and key != "exc_info":
            event_dict[key] = _redact_value(value)
    return event_dict


def _redacted_traceback(sio: TextIO, exc_info: ExcInfo) -> None:
    sio.write("\n" + redact_text("".join(traceback.format_exception(*exc_info))).rstrip("\n"))


def _format_exc_redacted(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    exc_info = event_dict.pop("exc_info", None)
    if exc_info:
        if exc_info is True:
            exc_info = sys.exc_info()
        elif isinstance(exc_info, BaseException):
            exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
        if exc_info and exc_info[0] is not None:
            sio = StringIO()
            _redacted_traceback(sio, exc_info)
            event_dict["exception"] = sio.getvalue().strip("\n")
    return event_dict


def _shared() -> list[Processor]:
    """What every line gets, whether it came from structlog or from a stdlib record."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="time"),
    ]


def _renderers(fmt: str) -> list[Processor]:
    if fmt == "json":
        return [
            _format_exc_redacted,
            redact,
            structlog.processors.EventRenamer("message"),
            structlog.processors.JSONRenderer(default=str),
        ]
    return [
        redact,
        structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=_redacted_traceback, timestamp_key="time"
        ),
    ]


def formatter(fmt: str) -> structlog.stdlib.ProcessorFormatter:
    """A stdlib formatter that renders any record through haul's pipeline."""
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_shared(),
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *_renderers(fmt)],
    )


def configure_logging(
    fmt: str = "console", level: str = "INFO", stream: TextIO | None = None
) -> None:
    """Route the stdlib root logger and structlog through one handler on ``stream``."""
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_shared(),
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter(fmt))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    sdk_loggers = [name for t in registry.STORE_TYPES for name in t.loggers]
    for noisy in ("httpx", "httpcore", "urllib3", *sdk_loggers):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger


__all__ = [
    "RedactingFilter",
    "configure_logging",
    "formatter",
    "get_logger",
    "redact",
    "redact_text",
]
