"""What Celery itself shows of a haul message: redacted and bounded.

Celery copies a message's arguments into its monitoring: the ``argsrepr`` the client wrote
goes into the ``task-received`` event (Flower and ``celery events`` show it), into the
``Received task`` / ``succeeded`` log records, and ``celery inspect active`` answers with the
arguments themselves. A haul message carries input URLs, and a presigned URL's query string
is a credential (contract section 7). So every haul task uses this request class: the
representations are redacted (:func:`worker.logs.redact_text`, as haul's own log lines are)
and cut to the length haul's log lines keep, and ``inspect active`` gets those
representations instead of the arguments (what Celery's ``safe`` mode answers anyway).
"""

from __future__ import annotations

from typing import Any

from celery.worker.request import Request

from worker.errors import bounded
from worker.logs import LOG_MAX_CHARS, redact_text


def shown(text: str) -> str:
    """A message representation as Celery may show it."""
    return bounded(redact_text(text), LOG_MAX_CHARS) if text else text


class RedactedRequest(Request):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._argsrepr: str = shown(str(self.argsrepr or ""))
        self._kwargsrepr: str = shown(str(self.kwargsrepr or ""))
        # The pool process logs the request dict's copies (the success line's record).
        for key in ("argsrepr", "kwargsrepr"):
            value = self._request_dict.get(key)
            if isinstance(value, str):
                self._request_dict[key] = shown(value)

    def info(self, safe: bool = False) -> dict[str, Any]:
        return super().info(safe=True)  # type: ignore[no-any-return]
