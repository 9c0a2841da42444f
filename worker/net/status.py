"""The one map from an HTTP status (and a store's error code) to haul's errors.

Every backend answers in HTTP underneath, so the status ladder is written once, here, as a
table; a backend adds a table of its own error codes (S3 ``SlowDown``, Azure
``ContainerNotFound``, ...) that wins over the status. A row may name a different error for a
conditional create (412 there means the key is taken) or for a pinned read. Statuses without a
row fall back by class: 5xx is temporary, anything else is a plain :class:`StoreError`.

A body that cannot be parsed (an XML or JSON answer cut short or garbled on the way, a listing
page of ``[`` instead of ``[]``) is the table's ``malformed`` row: temporary, like a reset, since
the next attempt normally gets the whole answer. Each backend names the SDK exceptions that mean
"malformed" in its own ``_translate``; before they were named, a cut Swift listing page escaped
as ``internal_error: JSONDecodeError`` and a cut Azure listing failed the input unretried.

``Retry-After`` (seconds or an HTTP date) travels on :class:`TransientError` as
``retry_after_s``; the engine's retry policy, the one owner of retries, honours it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from types import MappingProxyType
from typing import Literal

from worker.errors import (
    AccessDenied,
    AlreadyExists,
    Changed,
    HaulError,
    IntegrityError,
    NotFound,
    SourceError,
    StoreError,
    TransientError,
)

#: what the failed call was doing: a pinned read, a conditional create, anything else
Op = Literal["read", "create", "other"]

#: a Retry-After longer than this is taken as this (a misconfigured server must not park a task)
MAX_RETRY_AFTER_S = 600.0


@dataclass(frozen=True)
class Rule:
    """One row: the error to raise and what its message says."""

    error: type[StoreError]
    says: str
    #: the row for a conditional create, when it differs
    on_create: Rule | None = None
    #: the row for a pinned read, when it differs
    on_read: Rule | None = None

    def for_op(self, op: Op) -> Rule:
        if op == "create" and self.on_create is not None:
            return self.on_create
        if op == "read" and self.on_read is not None:
            return self.on_read
        return self


_CHANGED = Rule(Changed, "the object changed since it was first seen")
_TAKEN = Rule(AlreadyExists, "the key already exists")
_BUSY = Rule(TransientError, "temporary server error")
#: an answer whose body does not parse: cut short or garbled in transit, so worth another attempt
MALFORMED = Rule(TransientError, "the answer could not be parsed (cut short or garbled)")

#: the status ladder every HTTP-speaking backend shares
HTTP_STATUSES: Mapping[int, Rule] = MappingProxyType(
    {
        401: Rule(AccessDenied, "access denied"),
        403: Rule(AccessDenied, "access denied"),
        404: Rule(NotFound, "not found"),
        408: _BUSY,
        410: Rule(NotFound, "gone"),
        412: Rule(Changed, _CHANGED.says, on_create=_TAKEN),
        416: Rule(IntegrityError, "range not satisfiable; the object shrank?"),
        425: _BUSY,
        429: Rule(TransientError, "throttled"),
        500: _BUSY,
        # Not worth another attempt: an old S3-compatible server without conditional writes
        # answers every If-None-Match PUT so.
        501: Rule(StoreError, "the server does not implement this request"),
        502: _BUSY,
        503: Rule(TransientError, "service unavailable"),
        504: _BUSY,
    }
)


@dataclass(frozen=True)
class ErrorTable:
    """A backend's error codes over the shared status ladder."""

    codes: Mapping[str, Rule] = field(default_factory=dict)
    statuses: Mapping[int, Rule] = field(default_factory=lambda: HTTP_STATUSES)
    #: what a status without a row (and below 500) becomes
    fallback: type[HaulError] = StoreError
    #: what an answer whose body does not parse becomes
    malformed_rule: Rule = MALFORMED

    def rule(self, status: int, code: str = "") -> Rule | None:
        """The row that decides, or None when the fallback does."""
        return self.codes.get(code) if code in self.codes else self.statuses.get(status)

    def error(
        self,
        where: str,
        *,
        status: int = 0,
        code: str = "",
        op: Op = "other",
        retry_after_s: float | None = None,
    ) -> HaulError:
        detail = ", ".join(p for p in (code, f"HTTP {status}" if status else "") if p) or "error"
        rule = self.rule(status, code)
        if rule is None:
            if status >= 500:
                rule = _BUSY
            else:
                return self.fallback(f"{where}: request failed ({detail})")
        return self._raise(rule.for_op(op), f"({detail})", where, retry_after_s)

    def malformed(self, where: str, exc: BaseException) -> HaulError:
        """The error for an answer whose body the SDK could not parse. Only the exception's
        type is shown: parsers quote the body (botocore: all of it), which is the server's."""
        return self._raise(self.malformed_rule, f"({type(exc).__name__})", where, None)

    @staticmethod
    def _raise(rule: Rule, detail: str, where: str, retry_after_s: float | None) -> HaulError:
        message = f"{where}: {rule.says} {detail}"
        if issubclass(rule.error, TransientError):
            return rule.error(message, retry_after_s=retry_after_s)
        return rule.error(message)


def parse_retry_after(value: str | None, now: Callable[[], float] = time.time) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER_S)
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return min(max(0.0, when - now()), MAX_RETRY_AFTER_S)


def header_retry_after(headers: Mapping[str, str] | None) -> float | None:
    """``Retry-After`` from a header mapping whatever its case (SDKs differ)."""
    if not headers:
        return None
    for name, value in headers.items():
        if name.lower() == "retry-after":
            return parse_retry_after(str(value))
    return None


#: the table of plain http(s) sources (they have no error codes of their own)
HTTP = ErrorTable(fallback=SourceError)


def http_status_error(
    status: int, where: str, *, op: Op = "other", retry_after: str | None = None
) -> HaulError:
    """The error for a non-2xx answer to a plain HTTP request."""
    return HTTP.error(where, status=status, op=op, retry_after_s=parse_retry_after(retry_after))
