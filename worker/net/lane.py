"""Many small GETs on one thread: non-blocking keep-alive connections and a selector.

Thousands of small files through a pool of threads cost more in GIL hand-offs and in the kernel
than in HTTP: on the 2-core machine this was measured on, 16 threads fetching 2000 files of
10 KiB spent about 116 futex calls per file, and the whole batch took 1.1 s where one thread with
a selector took 0.22 s. curl -Z and aria2c are event loops for the same reason.

A request can carry a validator of a copy the caller holds (``If-None-Match``); its ``304``
is then a complete answer too, so checking a cached object costs the same one round trip on the
same connections as fetching it, and a changed object's new body comes in that same answer.

This is only a fast lane. A request whose answer is not a plain, complete ``200``/``206`` with a
``Content-Length`` within the limit, or that ``304`` (a redirect, an error status, a chunked or
larger body, a refused address, a reset, a timeout) comes back as *fall back*, and the caller
sends it through the ordinary path, which has the retries, redirects and error messages. So the
lane never has to be right about anything but the easy case.

The address guard is kept: each connection goes to an address checked by
:func:`worker.net.guard.resolve`. Each connection carries one request at a time (no pipelining);
a connection the server closed while idle gets the request again once on a new one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import select
import selectors
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from worker.errors import HaulError
from worker.net.guard import resolve
from worker.net.pool import basic_auth

#: characters a request line must not carry as they are (controls, space, non-ASCII)
_UNUSUAL = re.compile(r"[^\x21-\x7e]")
_RECV = 256 * 1024
_MAX_HEAD = 64 * 1024
#: failed requests after which a host that never answered well leaves the lane
_GIVE_UP_AFTER = 4
#: requests taken from the caller's iterator ahead of the connections, per connection: enough
#: that every connection answered in one round finds its next request queued, few enough that
#: building them (a cache entry read each, for a warm cache) does not delay the first request
_AHEAD_PER_CONN = 2


@dataclass(frozen=True)
class LaneRequest:
    token: int
    scheme: str
    host: str
    port: int
    target: str
    headers: dict[str, str]
    #: the headers hold a validator (If-None-Match...): a ``304`` is then an answer too
    conditional: bool = False


@dataclass
class LaneAnswer:
    """A complete small answer, or ``body is None`` with why it falls back.

    A ``304`` to a conditional request is complete with an empty body.
    """

    token: int
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    reason: str = ""
    #: from the request's first byte sent (or connect) to its last byte received
    seconds: float = 0.0


def lane_request(token: int, url: str, held: str | None = None) -> LaneRequest | None:
    """The lane's request for ``url``, or None when anything about it is unusual (the ordinary
    way then decides: a bad port, a non-ASCII host that needs IDNA, odd characters...).

    ``held``: the strong ETag of a copy the caller has, sent as ``If-None-Match``.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = parts.hostname
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if (
        scheme not in ("http", "https")
        or not host
        or not host.isascii()
        or _UNUSUAL.search(target + host)
    ):
        return None
    port = port or (443 if scheme == "https" else 80)
    headers = basic_auth(url)
    if held is not None:
        if _UNUSUAL.search(held):
            return None
        headers = {**headers, "If-None-Match": held}
    return LaneRequest(token, scheme, host, port, target, headers, conditional=held is not None)


_Key = tuple[str, str, int]


class IdleConnections:
    """Kept-alive lane connections between runs, so the next batch (the next task's cache
    validation, say) skips the connect: measured 1.7 ms of every task with one cached input.

    Only the process that opened a connection uses it: a prefork pool process that inherited
    this object from its parent forgets the parent's sockets (closing only its own copies of
    the descriptors) and starts empty, so two processes never talk on one connection.
    """

    def __init__(self, max_per_host: int) -> None:
        self._max = max(1, max_per_host)
        self._pid = os.getpid()
        self._idle: dict[_Key, list[socket.socket]] = {}
        self._lock = threading.Lock()

    def _mine(self) -> dict[_Key, list[socket.socket]]:
        # Called with the lock held.
        if self._pid != os.getpid():
            inherited, self._idle = self._idle, {}
            self._pid = os.getpid()
            for socks in inherited.values():
                for sock in socks:
                    with contextlib.suppress(OSError):
                        sock.close()
        return self._idle

    def take(self, key: _Key) -> socket.socket | None:
        """An idle connection to ``key`` that still looks open, or None."""
        while True:
            with self._lock:
                socks = self._mine().get(key)
                if not socks:
                    return None
                sock = socks.pop()
            if _still_open(sock):
                return sock
            with contextlib.suppress(OSError):
                sock.close()

    def give(self, key: _Key, sock: socket.socket) -> None:
        with self._lock:
            socks = self._mine().setdefault(key, [])
            if len(socks) < self._max:
                socks.append(sock)
                return
        sock.close()

    def forget(self, key: _Key) -> None:
        """Close the idle connections to ``key`` (one of them was found closed by the server:
        the others, idle as long, probably are too)."""
        with self._lock:
            socks = self._mine().pop(key, [])
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._mine(), {}
        for socks in idle.values():
            for sock in socks:
                with contextlib.suppress(OSError):
                    sock.close()


def _still_open(sock: socket.socket) -> bool:
    """An idle keep-alive connection has nothing to read: readable means the server closed it
    (or sent something unasked, TLS close_notify included); either way it is not reused."""
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return False
    try:
        poller = select.poll()
        poller.register(sock, select.POLLIN | select.POLLERR | select.POLLHUP)
        return not poller.poll(0)
    except (OSError, ValueError):
        return False


class _Conn:
    def __init__(self, key: _Key, sock: socket.socket) -> None:
        self.key = key
        self.sock = sock
        self.handshaking = False
        self.connecting = True
        self.request: LaneRequest | None = None
        self.out = b""
        self.buf = bytearray()
        self.head_end = -1
        self.status = 0
        self.headers: dict[str, str] = {}
        self.length = -1
        self.close_after = False
        self.served = 0
        #: taken from :class:`IdleConnections` (its server may have closed it meanwhile)
        self.reused = False
        self.deadline = 0.0
        self.started = time.monotonic()


class SmallGetLoop:
    """Runs GETs for small bodies concurrently on the calling thread."""

    def __init__(
        self,
        *,
        allow_private: bool,
        timeout_s: float,
        ssl_context: Callable[[], ssl.SSLContext],
        base_headers: dict[str, str],
        max_body: int,
        max_connections: int,
        idle: IdleConnections | None = None,
    ) -> None:
        """``idle``: where connections left open at the end of a run wait for the next run
        (None: they are closed)."""
        self._idle = idle
        self._allow_private = allow_private
        self._timeout = timeout_s
        self._ssl_context = ssl_context
        self._base = base_headers
        self._max_body = max_body
        self._max_conns = max(1, max_connections)
        self._sel = selectors.DefaultSelector()
        self._pending: dict[_Key, deque[LaneRequest]] = {}
        self._queued = 0
        self._source: Iterator[LaneRequest] = iter(())
        self._drained = True
        self._given_up: set[_Key] = set()
        self._conns: set[_Conn] = set()
        self._retried: set[int] = set()
        self._failures: dict[_Key, int] = {}
        self._served: set[_Key] = set()
        # Answers wait here until the socket work of one event is done: the caller's callback
        # then runs outside the socket error handling, so its own errors are never taken for a
        # connection problem.
        self._ready: list[LaneAnswer] = []

    # ------------------------------------------------------------------ driving
    def run(
        self,
        requests: Iterable[LaneRequest],
        answer: Callable[[LaneAnswer], None],
        stop: threading.Event | None = None,
    ) -> None:
        """Send every request; ``answer`` gets exactly one :class:`LaneAnswer` per request.

        ``requests`` is taken lazily, a few per connection ahead: the caller may build each
        request as it is taken (reading a cache entry for its validator, say), and the first
        ones go out without waiting for the rest to be built.
        """
        self._source = iter(requests)
        self._drained = False
        try:
            self._fill()
            self._open_more()
            self._flush(answer)
            while self._conns or self._queued or not self._drained:
                if stop is not None and stop.is_set():
                    self._abandon("stopped")
                    return
                if self._conns:
                    now = time.monotonic()
                    wait = min(c.deadline for c in self._conns) - now
                    # Every ready socket first (each answered connection sends its next request
                    # at once), then the answers: at a network's latency the answers of all
                    # connections arrive together, and hashing and writing one of them must not
                    # hold back the next requests of the others by a round trip.
                    for key, mask in self._sel.select(max(0.0, min(wait, 0.5))):
                        conn: _Conn = key.data
                        if conn in self._conns:
                            self._event(conn, mask)
                    self._flush(answer)
                    now = time.monotonic()
                    for conn in [c for c in self._conns if c.deadline <= now]:
                        self._fail(conn, "timed out", retry=False)
                # Outside the socket work: building a request is the caller's code, and its
                # errors must never be taken for a connection problem.
                self._fill()
                self._open_more()
                self._flush(answer)
        finally:
            self._abandon("not sent")
            self._sel.close()
            self._flush(answer)

    def _give(self, answer: LaneAnswer) -> None:
        self._ready.append(answer)

    def _flush(self, answer: Callable[[LaneAnswer], None]) -> None:
        while self._ready:
            answer(self._ready.pop(0))

    def _fill(self) -> None:
        """Take requests from the caller until enough wait for the connections."""
        ahead = self._max_conns * _AHEAD_PER_CONN
        while self._queued < ahead and not self._drained:
            req = next(self._source, None)
            if req is None:
                self._drained = True
                return
            key = (req.scheme, req.host, req.port)
            if key in self._given_up:
                self._give(LaneAnswer(req.token, reason="host failed"))
                continue
            self._pending.setdefault(key, deque()).append(req)
            self._queued += 1

    def _take(self, queue: deque[LaneRequest]) -> LaneRequest:
        self._queued -= 1
        return queue.popleft()

    def _abandon(self, reason: str) -> None:
        for conn in list(self._conns):
            self._fail(conn, reason, retry=False)
        for queue in self._pending.values():
            while queue:
                self._give(LaneAnswer(self._take(queue).token, reason=reason))
        self._pending.clear()
        # The ones not taken yet get their answer too (each request exactly one).
        if not self._drained:
            self._drained = True
            for req in self._source:
                self._give(LaneAnswer(req.token, reason=reason))

    def _open_more(self) -> None:
        for key in list(self._pending):
            queue = self._pending[key]
            while queue and len(self._conns) < self._max_conns:
                req = self._take(queue)
                if not self._connect(key, req):
                    continue
            if not queue:
                del self._pending[key]

    # ------------------------------------------------------------------ connections
    def _connect(self, key: _Key, req: LaneRequest) -> bool:
        if self._idle is not None and req.token not in self._retried:
            sock = self._idle.take(key)
            if sock is not None:
                return self._reuse(key, req, sock)
        try:
            addresses = resolve(key[1], key[2], allow_private=self._allow_private)
        except (HaulError, OSError, ValueError) as exc:  # UnicodeError: a bad host name
            self._give(LaneAnswer(req.token, reason=str(exc)))
            return False
        ip = addresses[0]
        try:
            sock = socket.socket(
                socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM
            )
        except OSError as exc:  # out of descriptors, say: the ordinary way decides
            self._give(LaneAnswer(req.token, reason=f"socket: {exc}"))
            return False
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            code = sock.connect_ex((ip, key[2]))
        except OSError as exc:
            sock.close()
            self._give(LaneAnswer(req.token, reason=f"connect: {exc}"))
            return False
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            self._give(LaneAnswer(req.token, reason=f"connect: {errno.errorcode.get(code)}"))
            return False
        conn = _Conn(key, sock)
        conn.request = req
        conn.deadline = time.monotonic() + self._timeout
        self._conns.add(conn)
        self._sel.register(sock, selectors.EVENT_WRITE, conn)
        return True

    def _reuse(self, key: _Key, req: LaneRequest, sock: socket.socket) -> bool:
        conn = _Conn(key, sock)
        conn.connecting = False
        conn.reused = True
        # served > 0: a server that closed it meanwhile gets the request again once on a new
        # connection, as a kept-alive connection of this run would.
        conn.served = 1
        conn.request = req
        self._conns.add(conn)
        self._sel.register(sock, selectors.EVENT_WRITE, conn)
        try:
            self._start_request(conn)
        except (OSError, ValueError) as exc:
            self._fail(conn, f"{type(exc).__name__}: {exc}", retry=True)
        return True

    def _close(self, conn: _Conn) -> None:
        self._conns.discard(conn)
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(conn.sock)
        conn.sock.close()

    def _fail(self, conn: _Conn, reason: str, *, retry: bool) -> None:
        req = conn.request
        self._close(conn)
        if req is None:
            return
        if retry and req.token not in self._retried:
            # A kept-alive connection the server closed before reading our request.
            self._retried.add(req.token)
            if conn.reused and self._idle is not None:
                self._idle.forget(conn.key)
            self._pending.setdefault(conn.key, deque()).appendleft(req)
            self._queued += 1
            return
        self._give(LaneAnswer(req.token, reason=reason))
        failures = self._failures[conn.key] = self._failures.get(conn.key, 0) + 1
        if failures >= _GIVE_UP_AFTER and conn.key not in self._served:
            # A host the lane cannot talk to: its other requests go the ordinary way at once
            # instead of each one finding that out (perhaps only after a timeout).
            self._given_up.add(conn.key)
            for other in self._pending.pop(conn.key, deque()):
                self._queued -= 1
                self._give(LaneAnswer(other.token, reason=f"host failed: {reason}"))

    def _want(self, conn: _Conn, mask: int) -> None:
        self._sel.modify(conn.sock, mask, conn)

    # ------------------------------------------------------------------ events
    def _event(self, conn: _Conn, mask: int) -> None:
        try:
            if conn.connecting:
                self._connected(conn)
            elif conn.handshaking:
                self._handshake(conn)
            elif conn.out:
                self._send(conn)
            else:
                self._receive(conn)
        except ssl.SSLWantReadError:
            self._want(conn, selectors.EVENT_READ)
        except ssl.SSLWantWriteError:
            self._want(conn, selectors.EVENT_WRITE)
        except (OSError, ValueError, UnicodeError) as exc:
            fresh = conn.served > 0 and not conn.buf
            self._fail(conn, f"{type(exc).__name__}: {exc}", retry=fresh)

    def _connected(self, conn: _Conn) -> None:
        code = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            raise OSError(code, errno.errorcode.get(code, "connect failed"))
        conn.connecting = False
        if conn.key[0] == "https":
            conn.sock = self._ssl_context().wrap_socket(
                conn.sock, server_hostname=conn.key[1], do_handshake_on_connect=False
            )
            self._sel.unregister(conn.sock)  # the wrapped socket has the same descriptor
            self._sel.register(conn.sock, selectors.EVENT_WRITE, conn)
            conn.handshaking = True
            self._handshake(conn)
            return
        self._start_request(conn)

    def _handshake(self, conn: _Conn) -> None:
        assert isinstance(conn.sock, ssl.SSLSocket)
        conn.sock.do_handshake()
        conn.handshaking = False
        self._start_request(conn)

    def _start_request(self, conn: _Conn) -> None:
        req = conn.request
        assert req is not None
        default = 443 if req.scheme == "https" else 80
        host = f"[{req.host}]" if ":" in req.host else req.host
        if req.port != default:
            host = f"{host}:{req.port}"
        lines = [f"GET {req.target} HTTP/1.1", f"Host: {host}"]
        headers = {**self._base, **req.headers, "Range": f"bytes=0-{self._max_body - 1}"}
        lines += [f"{k}: {v}" for k, v in headers.items()]
        conn.out = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        conn.buf.clear()
        conn.head_end = -1
        conn.started = time.monotonic()
        conn.deadline = conn.started + self._timeout
        self._send(conn)

    def _send(self, conn: _Conn) -> None:
        try:
            sent = conn.sock.send(conn.out)
        except (BlockingIOError, ssl.SSLWantWriteError):
            self._want(conn, selectors.EVENT_WRITE)
            return
        except ssl.SSLWantReadError:
            self._want(conn, selectors.EVENT_READ)
            return
        conn.out = conn.out[sent:]
        self._want(conn, selectors.EVENT_WRITE if conn.out else selectors.EVENT_READ)

    def _receive(self, conn: _Conn) -> None:
        while True:
            data = conn.sock.recv(_RECV)
            if not data:
                fresh = conn.served > 0 and not conn.buf
                self._fail(conn, "connection closed by the server", retry=fresh)
                return
            conn.buf += data
            conn.deadline = time.monotonic() + self._timeout
            if not self._progress(conn):
                return
            # TLS may hold decrypted bytes the selector cannot see.
            if not (isinstance(conn.sock, ssl.SSLSocket) and conn.sock.pending()):
                return

    def _progress(self, conn: _Conn) -> bool:
        """Parse what arrived; False once the connection is done with (answered or closed)."""
        if conn.head_end < 0:
            line_end = conn.buf.find(b"\n")
            if line_end == 0 or (line_end > 0 and conn.buf[line_end - 1] != 0x0D):
                self._fail(conn, "lines end with a bare LF", retry=False)
                return False
            end = conn.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(conn.buf) > _MAX_HEAD:
                    self._fail(conn, "response head too large", retry=False)
                    return False
                return True
            conn.head_end = end + 4
            reason = self._parse_head(conn, bytes(conn.buf[:end]).decode("latin-1"))
            if reason:
                self._fail(conn, reason, retry=False)
                return False
        if len(conn.buf) - conn.head_end < conn.length:
            return True
        if len(conn.buf) - conn.head_end > conn.length:
            self._fail(conn, "more bytes than Content-Length", retry=False)
            return False
        req = conn.request
        assert req is not None
        body = bytes(conn.buf[conn.head_end :])
        seconds = time.monotonic() - conn.started
        done = LaneAnswer(req.token, conn.status, conn.headers, body, seconds=seconds)
        self._served.add(conn.key)
        conn.request = None
        conn.served += 1
        # The next request goes out before this answer is handled, so the server works on it
        # while the caller hashes and writes.
        try:
            self._next(conn)
        except (OSError, ValueError) as exc:
            self._fail(conn, f"{type(exc).__name__}: {exc}", retry=True)
        self._give(done)
        return False

    def _parse_head(self, conn: _Conn, head: str) -> str:
        """Fill the status and headers; a non-empty return is why this answer falls back."""
        status_line, *lines = head.split("\r\n")
        version, _, rest = status_line.partition(" ")
        code = rest[:3]
        if not version.startswith("HTTP/1.") or not code.isdigit():
            return "not an HTTP/1.x response"
        conn.status = int(code)
        headers: dict[str, str] = {}
        for line in lines:
            name, sep, value = line.partition(":")
            if not sep or not name or name[0] in " \t":
                return "unusual response headers"
            name = name.strip().lower()
            value = value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        conn.headers = headers
        connection = headers.get("connection", "").lower()
        conn.close_after = "close" in connection or (
            version == "HTTP/1.0" and "keep-alive" not in connection
        )
        if conn.status == 304 and conn.request is not None and conn.request.conditional:
            conn.length = 0  # a 304 never has a body, whatever its headers say
            return ""
        if conn.status not in (200, 206):
            return f"HTTP {conn.status}"
        if "transfer-encoding" in headers:
            return "chunked body"
        length = headers.get("content-length", "")
        if not length.isdigit():
            return "no Content-Length"
        conn.length = int(length)
        if conn.length > self._max_body:
            return "larger than the small-object limit"
        if conn.status == 206:
            unit, _, spec = headers.get("content-range", "").partition(" ")
            if unit != "bytes" or spec != f"0-{conn.length - 1}/{conn.length}":
                return "a part of a larger object"
        return ""

    def _next(self, conn: _Conn) -> None:
        """Reuse the connection for the next request to the same host, or close it."""
        queue = self._pending.get(conn.key)
        if not queue and not conn.close_after and self._idle is not None:
            # Kept for the next run instead of closed; it leaves this run's selector.
            self._conns.discard(conn)
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(conn.sock)
            self._idle.give(conn.key, conn.sock)
            return
        if conn.close_after or not queue:
            self._close(conn)
            return
        conn.request = self._take(queue)
        if not queue:
            del self._pending[conn.key]
        self._start_request(conn)
