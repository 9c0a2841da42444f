"""Plumbing every cloud backend shares: one SDK-error boundary and records.

A backend names the SDK exceptions it translates (``sdk_errors``) and how (``_translate``);
everything it asks of its SDK goes through :meth:`SdkStore._call`, so no SDK exception gets past
the module. A call is made once: a :class:`~worker.errors.TransientError` goes up to the
engine's retry policy, the one owner of retries (a store retrying too made the attempts
multiply: 5 x 5 requests for one persistent 503).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from worker.errors import HaulError
from worker.net.status import Op
from worker.stores._stream import read_all
from worker.stores.base import ObjectInfo, SourceBase, StreamContext

T = TypeVar("T")


class SdkStore(SourceBase):
    #: the SDK's exception classes this backend turns into haul's errors
    @property
    def sdk_errors(self) -> tuple[type[BaseException], ...]:
        """The SDK's exception classes (a property: the SDK is imported on first use)."""
        return ()

    def _translate(self, exc: Any, where: str, op: Op) -> HaulError:
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
        """One attempt of ``fn`` with its SDK errors translated."""
        with self._sdk(key, op):
            return fn()

    def read(
        self, key: str, *, start: int = 0, length: int | None = None, pin: ObjectInfo | None = None
    ) -> StreamContext:
        raise NotImplementedError

    def get_record(self, key: str) -> bytes:
        with self.read(key) as stream:
            return read_all(stream)
