"""HTTP(S) inputs: any public address.

Reads are ranged and pinned: the ETag of the first response goes out as ``If-Match`` with every
later range (a weak ETag cannot pin, so ``If-Unmodified-Since`` with Last-Modified is used
instead), and a 412 becomes :class:`~worker.errors.Changed`. Redirects are followed by hand, at
most ``max_redirects`` hops, each hop through the private-address guard.

Bodies are read through :mod:`worker.net.pool` (http.client with ``readinto``; it keeps
the address guard), which costs far less CPU per byte than httpx; ``fast=False`` uses httpx
(:mod:`worker.net.httpx_client`) for everything. Many small objects of a batch go through
:meth:`HttpSource.fetch_small` (:mod:`worker.net.lane`, one thread, a selector).
:meth:`HttpSource.read_first` asks for the first range without a prior stat, so a small file
costs one request and a large one learns its size and ETag from its first chunk.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator, Sequence
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urljoin

from worker.errors import (
    Changed,
    HaulError,
    IntegrityError,
    SourceError,
)
from worker.net.lane import (
    IdleConnections,
    LaneAnswer,
    LaneRequest,
    SmallGetLoop,
    lane_request,
)
from worker.net.pool import FastBody, FastClient, request_target
from worker.net.redact import redact_url
from worker.net.status import http_status_error
from worker.stores.base import (
    NotModified,
    ObjectInfo,
    SmallDelivery,
    SmallObject,
    SourceBase,
    StreamContext,
)

if TYPE_CHECKING:
    from worker.net.httpx_client import HttpxClient, HttpxResponse

_REDIRECTS = {301, 302, 303, 307, 308}
T = TypeVar("T")


def _status_error(
    status: int, url: str, header: Callable[[str], str | None] | None = None
) -> HaulError:
    """The answer ``status`` as a haul error (:mod:`worker.net.status`, the one map)."""
    retry_after = header("retry-after") if header is not None else None
    return http_status_error(status, redact_url(url), op="read", retry_after=retry_after)


def _iso(http_date: str | None) -> str | None:
    if not http_date:
        return None
    return _iso_of(http_date)


@functools.lru_cache(maxsize=256)
def _iso_of(http_date: str) -> str | None:
    # Memoised: objects written together share their Last-Modified second, and parsing an
    # HTTP date (email.utils) was ~10 us of every small file on the lane's one thread.
    try:
        return parsedate_to_datetime(http_date).isoformat()
    except (TypeError, ValueError):
        return None


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
        fast: bool = True,
    ) -> None:
        # httpx (and its 40 ms of imports) only where the fast client is off: see
        # worker.net.httpx_client.
        self._httpx: HttpxClient | None = None
        self._verify = verify
        self._max_connections = max_connections
        self.max_redirects = max_redirects
        self._allow_private = allow_private
        self._timeout_s = timeout_s
        self.fast: FastClient | None = None
        # The lane's connections outlive a batch (worker.net.lane.IdleConnections), per process.
        self._lane_idle: IdleConnections | None = None
        if fast:
            self._lane_idle = IdleConnections(max_connections)
            self.fast = FastClient(
                allow_private=allow_private,
                timeout_s=timeout_s,
                verify=verify,
                max_idle_per_host=max_connections,
            )

    @property
    def client(self) -> HttpxClient:
        if self._httpx is None:
            from worker.net.httpx_client import HttpxClient

            self._httpx = HttpxClient(
                allow_private=self._allow_private,
                timeout_s=self._timeout_s,
                verify=self._verify,
                max_connections=self._max_connections,
            )
        return self._httpx

    def close(self) -> None:
        if self._httpx is not None:
            self._httpx.close()
        if self.fast is not None:
            self.fast.close()
        if self._lane_idle is not None:
            self._lane_idle.close()

    def uri(self, key: str) -> str:
        return redact_url(key)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        raise SourceError("http(s) URLs cannot be listed; wildcards work only in store URLs")

    def _follow(self, url: str, hop: Callable[[str], tuple[int, str | None, T]]) -> tuple[T, str]:
        """Follow redirects by hand, at most ``max_redirects`` hops, each one sent by ``hop``
        (so each goes through the address guard); returns the last answer and its URL.

        ``hop(current)`` sends one GET and returns (status, Location, answer); for a redirect
        it has already released the connection.
        """
        current = url
        for _ in range(self.max_redirects + 1):
            status, location, answer = hop(current)
            if status not in _REDIRECTS:
                return answer, current
            if not location:
                raise SourceError(f"{redact_url(current)}: redirect without a Location")
            current = urljoin(current, location)
            if not current.startswith(("http://", "https://")):
                raise SourceError(f"{redact_url(url)} redirects to a non-HTTP URL")
        raise SourceError(f"{redact_url(url)}: more than {self.max_redirects} redirects")

    def _send(self, url: str, headers: dict[str, str]) -> tuple[HttpxResponse, str]:
        """GET through httpx; returns the streaming response and the final URL."""
        client = self.client

        def hop(current: str) -> tuple[int, str | None, HttpxResponse]:
            response = client.get(current, headers)
            if response.status_code in _REDIRECTS:
                response.close()
            return response.status_code, response.headers.get("location"), response

        return self._follow(url, hop)

    def _fast_send(
        self, url: str, headers: dict[str, str]
    ) -> tuple[int, Callable[[str], str | None], FastBody | None, str]:
        """GET through the fast client; returns status, header getter, body and final URL."""
        fast = self.fast
        assert fast is not None

        def hop(current: str) -> tuple[int, str | None, tuple[Any, FastBody | None]]:
            scheme, host, port, target = request_target(current)
            if scheme not in ("http", "https") or not host:
                raise SourceError(f"{redact_url(url)} redirects to a non-HTTP URL")
            response, body = fast.get(scheme, host, port, target, headers, current)
            return response.status, response.getheader("location"), (response, body)

        (response, body), final = self._follow(url, hop)
        return response.status, response.getheader, body, final

    def stat(self, key: str) -> ObjectInfo:
        if self.fast is not None:
            status, header, body, final = self._fast_send(key, {"Range": "bytes=0-0"})
            if body is not None:
                body.close()
            return self._info(key, final, status, header)
        response, final = self._send(key, {"Range": "bytes=0-0"})
        try:
            return self._info(key, final, response.status_code, response.headers.get)
        finally:
            response.close()

    def read_first(self, key: str, length: int) -> tuple[ObjectInfo, StreamContext]:
        """Describe ``key`` and open its first ``length`` bytes with one request.

        The stream holds ``min(length, size)`` bytes, or the whole body when the server
        ignores ranges (``info.ranges`` is then False).
        """
        if self.fast is None:
            info = self.stat(key)
            return info, self.read(key, start=0, length=min(length, max(info.size, 0)), pin=info)
        status, header, body, final = self._fast_send(key, {"Range": f"bytes=0-{length - 1}"})
        if body is None and status != 416:
            raise _status_error(status, key, header)
        info = self._info(key, final, status, header)
        if body is None:  # 416: an empty object
            return info, StreamContext(_Empty())
        if status == 206 and info.size >= 0:
            # The first chunk is placed at offset 0: a 206 of other bytes (another start, a
            # garbled Content-Range) would otherwise end as a file of the right size and the
            # wrong bytes, since an HTTP server states no checksum.
            try:
                _check_range(key, header("content-range"), 0, min(length, info.size), None)
            except HaulError:
                body.close()
                raise
        return info, StreamContext(body)

    def fetch_small(
        self,
        keys: Sequence[str],
        limit: int,
        deliver: SmallDelivery,
        *,
        max_connections: int,
        stop: threading.Event | None = None,
        held: Callable[[int], str | None] | None = None,
    ) -> None:
        """Fetch objects of at most ``limit`` bytes on one thread (:mod:`.lane`).

        ``deliver(index, got)`` is called once per key, on this thread; ``got`` is None when
        that key must go the ordinary way instead (not small, not a plain answer, or any
        trouble): nothing is decided here that the ordinary path would decide differently.
        A key with a ``held`` version (a strong ETag; ``held(index)`` is asked just before that
        key's request is built) is asked for with ``If-None-Match`` on it: a ``304`` that
        names that same ETag is delivered as :class:`NotModified`.
        """
        fast = self.fast
        if fast is None:
            for index in range(len(keys)):
                deliver(index, None)
            return
        sent: dict[int, str] = {}  # the version each conditional request carried

        def requests() -> Iterator[LaneRequest]:
            # Built as the lane takes them, so the first requests go out before the versions
            # of the others are looked up (a cache entry read each).
            for index, key in enumerate(keys):
                version = held(index) if held is not None else None
                request = lane_request(index, key, version)
                if request is None:
                    deliver(index, None)
                    continue
                if version is not None:
                    sent[index] = version
                yield request

        loop = SmallGetLoop(
            allow_private=self._allow_private,
            timeout_s=self._timeout_s,
            ssl_context=fast.ssl_context,
            base_headers=fast.base_headers,
            max_body=limit,
            max_connections=max_connections,
            idle=self._lane_idle,
        )

        def answer(got: LaneAnswer) -> None:
            key = keys[got.token]
            if got.body is not None and got.status == 304:
                same = _unchanged_info(key, sent.get(got.token), got.headers)
                deliver(got.token, None if same is None else NotModified(same, got.seconds))
                return
            info = None if got.body is None else self._small_info(key, got)
            if info is None or got.body is None:
                deliver(got.token, None)
            else:
                deliver(got.token, SmallObject(info, got.body, got.seconds))

        loop.run(requests(), answer, stop)

    def _small_info(self, key: str, got: LaneAnswer) -> ObjectInfo | None:
        """The object's description when ``got`` holds all of it, else None (the lane already
        refused a ``206`` that is not the whole object)."""
        assert got.body is not None
        info = self._info(key, key, got.status, got.headers.get)
        return info if info.size == len(got.body) else None

    def _info(
        self, key: str, final: str, status: int, header: Callable[[str], str | None]
    ) -> ObjectInfo:
        headers = _Headers(header)
        if status == 206:
            content_range = headers.get("content-range") or ""
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
            raise _status_error(status, key, header)
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
        if self.fast is not None:
            return self._fast_read(key, url, headers, start, length, pin)
        response, final = self._send(url, headers)
        status = response.status_code
        if status not in (200, 206) or (ranged and status != 206):
            response.close()
            if status == 200:
                raise SourceError(f"{redact_url(key)}: the server ignored a Range request")
            raise _status_error(status, key, response.headers.get)
        if pin is not None and pin.etag and response.headers.get("etag") not in (None, pin.etag):
            response.close()
            raise Changed(f"{redact_url(key)} changed while it was being read (new ETag)")
        return StreamContext(self.client.body(response, final))

    def _fast_read(
        self,
        key: str,
        url: str,
        headers: dict[str, str],
        start: int,
        length: int | None,
        pin: ObjectInfo | None,
    ) -> StreamContext:
        ranged = "Range" in headers
        status, header, body, _ = self._fast_send(url, headers)
        if body is None or (ranged and status != 206):
            if body is not None:
                body.close()
            if status == 200:
                raise SourceError(f"{redact_url(key)}: the server ignored a Range request")
            raise _status_error(status, key, header)
        try:
            if pin is not None and pin.etag and header("etag") not in (None, pin.etag):
                raise Changed(f"{redact_url(key)} changed while it was being read (new ETag)")
            if ranged:
                _check_range(key, header("content-range"), start, length, pin)
        except HaulError:
            body.close()
            raise
        return StreamContext(body)


def _unchanged_info(key: str, held: str | None, headers: dict[str, str]) -> ObjectInfo | None:
    """The version a ``304`` confirms, or None when it does not confirm ours exactly.

    If-None-Match is compared weakly by servers, so a 304 could also mean "a weak ETag that
    matches yours"; only a 304 naming our strong ETag as the current one says the bytes are
    the same (a 304 without an ETag contradicts the 200 that gave us one).
    """
    if held is None or headers.get("etag") != held:
        return None
    last_modified = headers.get("last-modified")
    extra = {"final_url": key}
    if last_modified:
        extra["last_modified_http"] = last_modified
    return ObjectInfo(
        key=key,
        size=-1,
        etag=held,
        version=held,
        last_modified=_iso(last_modified),
        checksum_note="none: HTTP servers state no content checksum; size checked",
        extra=extra,
    )


def _check_range(
    key: str, content_range: str | None, start: int, length: int | None, pin: ObjectInfo | None
) -> None:
    """A 206 must carry exactly the bytes asked for; anything else is an integrity error."""
    unit, _, spec = (content_range or "").partition(" ")
    span, _, total = spec.partition("/")
    first, _, last = span.partition("-")
    if unit != "bytes" or not first.isdigit() or not last.isdigit():
        raise IntegrityError(f"{redact_url(key)}: bad Content-Range {content_range!r}")
    if pin is not None and pin.size >= 0 and total.isdigit() and int(total) != pin.size:
        raise Changed(f"{redact_url(key)} changed size while it was being read")
    want_last = (
        (pin.size - 1 if pin is not None else None) if length is None else start + length - 1
    )
    if int(first) != start or (want_last is not None and int(last) != want_last):
        raise IntegrityError(
            f"{redact_url(key)}: asked for bytes {start}-{want_last}, got {content_range!r}"
        )


class _Headers:
    """Case-insensitive ``get`` over either client's headers."""

    def __init__(self, header: Callable[[str], str | None]) -> None:
        self._header = header

    def get(self, name: str, default: str | None = None) -> str | None:
        value = self._header(name)
        return default if value is None else value


class _Empty:
    def readinto(self, buffer: memoryview) -> int:
        return 0

    def close(self) -> None:
        return None
