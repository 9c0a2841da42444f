"""HTTP(S) inputs: any public address, streamed with httpx.

Reads are ranged and pinned: the ETag of the first response goes out as ``If-Match`` with every
later range (a weak ETag cannot pin, so ``If-Unmodified-Since`` with Last-Modified is used
instead), and a 412 becomes :class:`~worker.errors.Changed`. Redirects are followed by hand, at
most ``max_redirects`` hops, each hop through the private-address guard.
"""

from __future__ import annotations

from collections.abc import Iterator
from email.utils import parsedate_to_datetime
from typing import Any

import httpcore
import httpx

from worker.errors import (
    AccessDenied,
    Changed,
    ForbiddenAddress,
    HaulError,
    IntegrityError,
    NotFound,
    SourceError,
    TransientError,
)
from worker.netguard import GuardedBackend
from worker.stores.base import ObjectInfo, SourceBase, StreamContext
from worker.urls import redact_url

_REDIRECTS = {301, 302, 303, 307, 308}


def _translate(exc: Exception, url: str) -> HaulError:
    """The one place httpx errors become haul errors."""
    shown = redact_url(url)
    if isinstance(exc, HaulError):
        return exc
    if isinstance(exc, httpx.TimeoutException):
        return TransientError(f"timed out reading {shown}")
    if isinstance(exc, httpx.TransportError):
        return TransientError(f"connection problem with {shown}: {type(exc).__name__}")
    return SourceError(f"cannot read {shown}: {type(exc).__name__}")


def _status_error(status: int, url: str) -> HaulError:
    shown = redact_url(url)
    if status in (404, 410):
        return NotFound(f"{shown}: HTTP {status} (not found)")
    if status in (401, 403):
        return AccessDenied(f"{shown}: HTTP {status} (access denied)")
    if status == 412:
        return Changed(f"{shown} changed while it was being read (HTTP 412)")
    if status == 416:
        return IntegrityError(f"{shown}: range not satisfiable (HTTP 416); the object shrank?")
    if status in (408, 425, 429) or status >= 500:
        return TransientError(f"{shown}: HTTP {status}")
    return SourceError(f"{shown}: HTTP {status}")


def _iso(http_date: str | None) -> str | None:
    if not http_date:
        return None
    try:
        return parsedate_to_datetime(http_date).isoformat()
    except (TypeError, ValueError):
        return None


class _Body:
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
                raise _translate(exc, self._url) from None
        n = min(len(buffer), len(self._left))
        buffer[:n] = self._left[:n]
        self._left = self._left[n:]
        return n

    def close(self) -> None:
        self._response.close()


class HttpSource(SourceBase):
    """Reads http(s) URLs; the key is the whole URL."""

    name = "http"

    def __init__(
        self,
        *,
        allow_private: bool = False,
        timeout_s: float = 60.0,
        max_redirects: int = 10,
        verify: Any = True,
        max_connections: int = 64,
    ) -> None:
        transport = httpx.HTTPTransport(
            verify=verify,
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
        )
        # Swap the connection pool's network backend for one that checks every address.
        pool = transport._pool
        pool._network_backend = GuardedBackend(allow_private=allow_private)
        self.client = httpx.Client(
            transport=transport,
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 15.0)),
            follow_redirects=False,
            headers={"User-Agent": "haul-worker", "Accept-Encoding": "identity"},
        )
        self.max_redirects = max_redirects

    def close(self) -> None:
        self.client.close()

    def uri(self, key: str) -> str:
        return redact_url(key)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        raise SourceError("http(s) URLs cannot be listed; wildcards work only in store URLs")

    def _send(self, url: str, headers: dict[str, str]) -> tuple[httpx.Response, str]:
        """GET ``url`` following redirects by hand; returns the streaming response and final URL."""
        current = url
        for _ in range(self.max_redirects + 1):
            try:
                request = self.client.build_request("GET", current, headers=headers)
                response = self.client.send(request, stream=True)
            except ForbiddenAddress:
                raise
            except (httpx.HTTPError, httpcore.ProtocolError) as exc:
                raise _translate(exc, current) from None
            if response.status_code not in _REDIRECTS:
                return response, current
            location = response.headers.get("location")
            response.close()
            if not location:
                raise SourceError(f"{redact_url(current)}: redirect without a Location")
            current = str(response.url.join(location))
            if not current.startswith(("http://", "https://")):
                raise SourceError(f"{redact_url(url)} redirects to a non-HTTP URL")
        raise SourceError(f"{redact_url(url)}: more than {self.max_redirects} redirects")

    def stat(self, key: str) -> ObjectInfo:
        response, final = self._send(key, {"Range": "bytes=0-0"})
        try:
            return self._info(key, final, response)
        finally:
            response.close()

    def _info(self, key: str, final: str, response: httpx.Response) -> ObjectInfo:
        status = response.status_code
        headers = response.headers
        if status == 206:
            content_range = headers.get("content-range", "")
            total = content_range.rsplit("/", 1)[-1]
            size = int(total) if total.isdigit() else -1
            ranges = size >= 0
        elif status == 200:
            length = headers.get("content-length")
            size = int(length) if length and length.isdigit() else -1
            ranges = False
        elif status == 416:
            # Range 0-0 on an empty object.
            size, ranges = 0, False
        else:
            raise _status_error(status, key)
        etag = headers.get("etag")
        last_modified = headers.get("last-modified")
        pin = etag if etag and not etag.startswith("W/") else None
        extra = {"final_url": final}
        if last_modified:
            extra["last_modified_http"] = last_modified
        return ObjectInfo(
            key=key,
            size=size,
            etag=etag,
            version=pin,
            last_modified=_iso(last_modified),
            ranges=ranges and (pin is not None or last_modified is not None),
            checksum_note="none: HTTP servers state no content checksum; size checked",
            extra=extra,
        )

    def read(
        self, key: str, *, start: int = 0, length: int | None = None, pin: ObjectInfo | None = None
    ) -> StreamContext:
        headers: dict[str, str] = {}
        url = key
        if pin is not None:
            url = pin.extra.get("final_url", key)
            if pin.version:
                headers["If-Match"] = pin.version
            elif "last_modified_http" in pin.extra:
                headers["If-Unmodified-Since"] = pin.extra["last_modified_http"]
        ranged = start > 0 or length is not None
        if ranged:
            end = "" if length is None else str(start + length - 1)
            headers["Range"] = f"bytes={start}-{end}"
        response, final = self._send(url, headers)
        status = response.status_code
        if status not in (200, 206) or (ranged and status != 206):
            response.close()
            if status == 200:
                raise SourceError(f"{redact_url(key)}: the server ignored a Range request")
            raise _status_error(status, key)
        if pin is not None and pin.etag and response.headers.get("etag") not in (None, pin.etag):
            response.close()
            raise Changed(f"{redact_url(key)} changed while it was being read (new ETag)")
        return StreamContext(_Body(response, final))
