"""Plumbing every cloud backend shares: one SDK-error boundary, bounded retries, records.

A backend names the SDK exceptions it translates (``sdk_errors``) and how (``_translate``);
everything it asks of its SDK goes through :meth:`SdkStore._call`, so no SDK exception gets past
the module and transient ones are retried within the backend's budget.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar, Literal, TypeVar

from worker.errors import StoreError
from worker.stores._retry import RetryPolicy, call_with_retry
from worker.stores._stream import read_all
from worker.stores.base import ObjectInfo, SourceBase, StreamContext

T = TypeVar("T")
Op = Literal["read", "create", "other"]


class SdkStore(SourceBase):
    #: the SDK's exception classes this backend turns into haul's errors
    sdk_errors: ClassVar[tuple[type[BaseException], ...]] = ()
    retry: RetryPolicy

    def _translate(self, exc: Any, where: str, op: Op) -> StoreError:
        raise NotImplementedError

    def _where(self, key: str) -> str:
        raise NotImplementedError

    @contextmanager
    def _sdk(self, key: str, op: Op = "other") -> Iterator[None]:
        try:
            yield
        except self.sdk_errors as exc:
            raise self._translate(exc, self._where(key), op) from None

    def _call(self, fn: Callable[[], T], key: str, op: Op = "other") -> T:
        def once() -> T:
            with self._sdk(key, op):
                return fn()

        return call_with_retry(once, self.retry)

    def read(
        self, key: str, *, start: int = 0, length: int | None = None, pin: ObjectInfo | None = None
    ) -> StreamContext:
        raise NotImplementedError

    def get_record(self, key: str) -> bytes:
        with self.read(key) as stream:
            return read_all(stream)
