"""haul's exception tree.

Every failure that haul reports has a stable ``code`` (it ends up in ``error.code`` of
``haul.inputs.failed`` / ``haul.outputs.failed`` events) and a message that is safe to show:
no credentials, no presigned query strings.

::

    HaulError
    ├── ConfigError                 settings that cannot be used (raised at start)
    ├── RedisUnavailable            Redis did not answer while a job ran
    ├── MessageError                a message that does not validate (never retried)
    ├── UnsafePathError             a name, id or path that would leave its folder
    ├── SourceError                 something wrong with where the bytes come from
    │   ├── UnsupportedURL          a URL scheme or form haul does not read
    │   ├── ForbiddenAddress        http(s) to loopback/private/link-local, refused
    │   ├── MissingExtra            a store whose optional SDK is not installed
    │   ├── NoMatch                 a wildcard that matched nothing
    │   └── TooManyMatches          a wildcard that matched more than max_wildcard_matches
    └── StoreError                  one store operation failed (raised only by worker.stores)
        ├── NotFound                the object or container does not exist
        ├── AccessDenied            credentials missing or not allowed
        ├── AlreadyExists           a conditional create found the key taken
        ├── Changed                 the object changed under a pinned read (412 / new version)
        ├── IntegrityError          bytes differ from what the server promised (size or checksum)
        └── TransientError          worth retrying: 5xx, throttling, resets, timeouts

Only the store modules catch SDK exceptions; they translate them at one boundary each.

Every message is bounded (:func:`bounded`): a hostile message can make haul echo a value of
megabytes (a URL, a store name, a key), and that echo would otherwise be copied whole into the
failure event, ``haul.log``, the task result and several worker log lines.
"""

from __future__ import annotations

from typing import Any

#: how many characters of one message, log line or field problem are shown
SHOWN_MAX_CHARS = 400
#: how many field problems a rejection lists (10 000 bad inputs would list 10 000)
MAX_PROBLEMS = 20


def bounded(text: str, limit: int = SHOWN_MAX_CHARS) -> str:
    """``text``, or its first ``limit`` characters and how long it was (``... (N characters,
    cut)``): the one place where what haul shows of a value is cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters, cut)"


class HaulError(Exception):
    """Root of every error haul raises on purpose; its message is bounded."""

    code = "haul_error"
    retryable = False
    #: the (redacted) input URL the error is about, when there is one
    url: str | None = None

    def __init__(self, message: object = "", *args: Any) -> None:
        super().__init__(bounded(str(message)), *args)


class ConfigError(HaulError):
    code = "config_error"


class MessageError(HaulError):
    code = "invalid_message"

    def __init__(self, message: str, errors: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        problems = [
            {"field": bounded(e["field"]), "problem": bounded(e["problem"])}
            for e in (errors or [])[:MAX_PROBLEMS]
        ]
        if errors and len(errors) > MAX_PROBLEMS:
            more = len(errors) - MAX_PROBLEMS
            problems.append({"field": "", "problem": f"... and {more} more problems"})
        self.errors = problems


class UnsafePathError(HaulError):
    code = "unsafe_path"


class SourceError(HaulError):
    code = "source_error"


class UnsupportedURL(SourceError):
    code = "unsupported_url"


class ForbiddenAddress(SourceError):
    code = "forbidden_address"


class MissingExtra(SourceError):
    code = "missing_extra"

    def __init__(self, store_type: str, extra: str, module: str) -> None:
        super().__init__(
            f"the {store_type} store needs {module!r}, which a plain install of haul brings; "
            f"this environment lacks it (pip install 'haul-worker[{extra}]' puts it back)"
        )


class NoMatch(SourceError):
    code = "no_match"


class TooManyMatches(SourceError):
    code = "too_many_matches"


class StoreError(HaulError):
    code = "store_error"


class NotFound(StoreError):
    code = "not_found"


class AccessDenied(StoreError):
    code = "access_denied"


class AlreadyExists(StoreError):
    code = "already_exists"


class KeyConflict(StoreError):
    """A content-addressed key holds other bytes than the content it is named after."""

    code = "key_conflict"


class Changed(StoreError):
    """The object was replaced while it was being read; start the object over."""

    code = "object_changed"
    retryable = True


class IntegrityError(StoreError):
    """Bytes differ from what the server promised (size or checksum); retried, then failed."""

    code = "integrity_error"
    retryable = True


class TransientError(StoreError):
    """Worth another attempt. ``retry_after_s`` is the server's own wish (``Retry-After``, a
    throttling answer), which the engine's retry policy honours within its budget."""

    code = "transient_error"
    retryable = True

    def __init__(self, message: str = "", *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        #: how long the server asked us to wait (``Retry-After``); the retry policy honours it
        self.retry_after_s = retry_after_s


class DiskFullError(HaulError):
    code = "disk_full"


class DestinationError(HaulError):
    """The local file cannot be written where it belongs (a folder at its name, permissions)."""

    code = "destination_error"


class ReportedFailure(HaulError):
    """A job's end whose outcome another copy of the job reports (the runner publishes none).

    Only :class:`LeaseLost` is one: every other failure gets its event from the job protocol
    (``worker/pipeline/protocol.py``), whatever it is.
    """

    code = "failed"


class LeaseLost(ReportedFailure):
    """This worker lost the execution's lease: another one runs it now, so this copy stops
    without a failure event (the other copy reports the outcome)."""

    code = "lease_lost"


class InternalError(HaulError):
    """Anything that was not foreseen, turned into an event at the task boundary."""

    code = "internal_error"


class RedisUnavailable(HaulError):
    """Redis (events, leases, records) did not answer while a job ran."""

    code = "redis_unavailable"


class Interrupted(HaulError):
    """The transfer was stopped on purpose (the task is shutting down, or a sibling failed).

    Unlike other failures it keeps the ``.haul-part`` file and its record, so the redelivered
    task resumes where this one stopped.
    """

    code = "interrupted"


class LeaseHeld(HaulError):
    """Another live worker holds this execution; the message is retried later, not dropped."""

    code = "lease_held"
    retryable = True
