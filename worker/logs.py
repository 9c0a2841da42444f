"""The worker's own log: readable lines for people, JSON lines for machines.

Every record passes a redaction filter, so a URL with userinfo or a presigned query string
never reaches a log line, whoever logged it. httpx logs each request URL at INFO; its loggers
are set to WARNING, and the filter covers them anyway.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from typing import Any

from worker.stores import registry
from worker.urls import redact_url

#: every URL a line may hold: http(s) and each store type's scheme (the registry's list)
_SCHEMES = "|".join(["https?", *(re.escape(t.scheme) for t in registry.STORE_TYPES)])
_URL = re.compile(rf"\b(?:{_SCHEMES})://[^\s'\"<>]+")
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def redact_text(text: str) -> str:
    return _URL.sub(lambda m: redact_url(m.group(0)), text)


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            try:
                record.msg = record.getMessage()
            except (TypeError, ValueError):
                record.msg = str(record.msg)
            record.args = None
        record.msg = redact_text(str(record.msg))
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exception"] = redact_text(self.formatException(record.exc_info))
        return json.dumps(doc, default=str)


class ConsoleFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")

    def formatException(self, ei: Any) -> str:
        return redact_text(super().formatException(ei))


def configure_logging(fmt: str = "console", level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else ConsoleFormatter())
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    sdk_loggers = [name for t in registry.STORE_TYPES for name in t.loggers]
    for noisy in ("httpx", "httpcore", "urllib3", *sdk_loggers):
        logging.getLogger(noisy).setLevel(logging.WARNING)
