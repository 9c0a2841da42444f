"""The httpx side of :class:`~worker.stores.http.HttpSource`, for when its fast client is off.

Kept apart so that importing haul does not import httpx (about 40 ms of a ``haul fetch`` start
on a 2-core machine): the fast path (:mod:`.pool`, :mod:`.lane`) covers every request
unless ``fast=False``. The address guard is the same: :class:`GuardedBackend` checks the
resolved address right before connecting, on every hop.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import httpcore
import httpx

from worker.errors import ForbiddenAddress, HaulError, IntegrityError, SourceError, TransientError
from worker.net.guard import resolve
from worker.net.redact import redact_url

HttpxResponse = httpx.Response


class GuardedBackend(httpcore.SyncBackend):
    """httpcore network backend that checks the resolved address right before connecting."""

    def __init__(self, *, allow_private: bool) -> None:
        self.allow_private = allow_private

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        addrs = resolve(host, port, allow_private=self.allow_private)
        last: Exception | None = None
        for ip in addrs:
            try:
                return super().connect_tcp(ip, port, timeout, local_address, socket_options)
            except httpcore.ConnectError as exc:
                last = exc
        assert last is not None
        raise last


def translate(exc: Exception, url: str) -> HaulError:
    """The one place httpx errors become haul errors."""
    shown = redact_url(url)
    if isinstance(exc, HaulError):
        return exc
    if isinstance(exc, httpx.RemoteProtocolError) and "message body" in str(exc):
        return IntegrityError(f"{shown}: the body ended before its announced length")
    if isinstance(exc, httpx.TimeoutException):
        return TransientError(f"timed out reading {shown}")
    if isinstance(exc, httpx.TransportError):
        return TransientError(f"connection problem with {shown}: {type(exc).__name__}")
    return SourceError(f"cannot read {shown}: {type(exc).__name__}")


class HttpxBody:
    """An httpx streaming response as a ByteStream."""

    def __init__(self, response: httpx.Response, url: str) -> None:
        self._response = response
        self._chunks = response.iter_raw(1024 * 1024)
        self._left = memoryview(b"")
        self._url = url

    def readinto(self, buffer: memoryview) -> int:
        if not self._left:
            try:
                self._left = memoryview(next(self._chunks))
            except StopIteration:
                return 0
            except (httpx.HTTPError, httpcore.ProtocolError) as exc:
                raise translate(exc, self._url) from None
        n = min(len(buffer), len(self._left))
        buffer[:n] = self._left[:n]
        self._left = self._left[n:]
        return n

    def close(self) -> None:
        self._response.close()


class HttpxClient:
    """One guarded httpx client; redirects are left to the caller."""

    def __init__(
        self, *, allow_private: bool, timeout_s: float, verify: Any, max_connections: int
    ) -> None:
        transport = httpx.HTTPTransport(
            verify=verify,
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
        )
        # Swap the connection pool's network backend for one that checks every address.
        transport._pool._network_backend = GuardedBackend(allow_private=allow_private)
        self._client = httpx.Client(
            transport=transport,
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 15.0)),
            follow_redirects=False,
            headers={"User-Agent": "haul-worker", "Accept-Encoding": "identity"},
        )

    def get(self, url: str, headers: dict[str, str]) -> httpx.Response:
        """Send one GET and return the streaming response (errors translated)."""
        try:
            request = self._client.build_request("GET", url, headers=headers)
            return self._client.send(request, stream=True)
        except ForbiddenAddress:
            raise
        except (httpx.HTTPError, httpcore.ProtocolError) as exc:
            raise translate(exc, url) from None

    def body(self, response: httpx.Response, url: str) -> HttpxBody:
        return HttpxBody(response, url)

    def close(self) -> None:
        self._client.close()
