"""A reverse proxy between haul and a real store server that flips bytes of chosen objects.

A thin use of :class:`tests.support.faultproxy.FaultProxy`: for a GET of an object whose path
ends with a key in :attr:`CorruptingProxy.keys`, the first byte of the body is flipped. HEAD
answers and JSON answers (GCS metadata, listings) pass untouched, so the server's stated
checksum is the true one while the bytes that arrive are not.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from tests.support.faultproxy import Fault, FaultProxy, ProxyRecord


class CorruptingProxy(FaultProxy):
    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self.keys: set[str] = set()

    def corrupt(self, key: str) -> None:
        self.keys.add(key)

    def count(self, key: str) -> int:
        """How many answers for ``key`` had a byte flipped."""
        return sum(1 for r in self.records(key) if r.fault is Fault.CORRUPT)

    def _admit(
        self, method: str, raw_path: str, rng: str | None, name: str | None = None
    ) -> ProxyRecord:
        rec = super()._admit(method, raw_path, rng, name)
        if method == "GET" and any(rec.is_for(k) for k in set(self.keys)):
            rec.fault = Fault.CORRUPT
        return rec


@contextmanager
def corrupting_proxy(upstream: str) -> Iterator[CorruptingProxy]:
    proxy = CorruptingProxy(upstream)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()
