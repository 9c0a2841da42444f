"""A fault-injecting HTTP reverse proxy between haul and a real store server.

::

    with fault_proxy("http://127.0.0.1:9000", flavour="s3", seed=7, rate=0.1) as proxy:
        ...  # point the worker's endpoint at proxy.url; proxy.records() says what happened

Every request is forwarded to the upstream server (moto, Azurite, fake-gcs-server, Swift, nginx
or :mod:`tests.support.httpserver`) with its Host header unchanged: the emulators do not check
signatures, and Swift's tempauth builds its storage URL from that header, so every later request
of a Swift client comes back through the proxy too. Responses are read whole from upstream and
then sent on, either untouched or with one :class:`Fault`:

* ``reset`` - RST before anything is forwarded; ``reset_after`` - forwarded (an upload is
  committed upstream), then RST instead of the answer, so the client never learns it worked.
* ``status_500``, ``status_503`` (no ``Retry-After``), ``status_503_retry_after``
  (``Retry-After: 1``) - not forwarded.
* ``throttle`` - the backend's own throttling answer, not forwarded: S3 ``SlowDown`` (503 XML),
  Azure ``ServerBusy`` (503, ``x-ms-error-code``), GCS 429 ``rateLimitExceeded`` (JSON), Swift
  498, HTTP 429 with ``Retry-After``.
* ``truncate`` - the upstream headers (full ``Content-Length``), half the body, then FIN.
* ``wrong_length`` - a ``Content-Length`` shorter than the upstream body, that many bytes, then
  FIN: an answer that looks complete and is not.
* ``stall`` - nothing is forwarded or sent for ``stall_s`` (set it past the client's read
  timeout); the record says whether the client gave up first (``client_gave_up``).
* ``replace`` - a ranged GET of an object registered with :meth:`FaultProxy.replace_on_read` is
  read from upstream, the object is replaced upstream (by the test's callback), and only then
  is the old answer sent on; requests for the object admitted after that GET wait until the
  replacement has landed. So it lands between this read and every later one, which all meet
  the new version (a race-free "replaced between two ranged reads"). With ``delay_s`` the
  callback runs instead on a thread that far after the answer, holding nothing back, landing at
  some moment of the reads that follow (a race, as on a loaded machine).
  :meth:`FaultProxy.replaced` says when it ran and each record when it was forwarded
  (``forwarded_at``), so a test can tell which versions a download may end with.
* ``corrupt`` - the first body byte flipped (only by :meth:`FaultProxy.force` rules).

Body faults (``truncate``, ``wrong_length``, ``corrupt``) need a body of 2+ bytes; a request
that draws one and has no such body passes untouched (its record's ``fault`` stays None).

**Seeded and reproducible.** With ``rate`` > 0 each request draws its fault from
``random.Random(f"{seed}|{method}|{path}|{range}|{n}")`` where ``n`` counts earlier requests
with the same method, path (without the query; through ``stable``, which can take out a bucket
name made unique per run) and Range header. The same seed gives the same
fault to the same request whatever the interleaving of other requests (:func:`draw` is the
pure function). :meth:`FaultProxy.force` rules come first and are not random: "every matching
request gets this fault", for the 100 % tests.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import random
import re
import select
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = [
    "ALL_RANDOM",
    "Fault",
    "FaultProxy",
    "ProxyRecord",
    "draw",
    "fault_proxy",
]

_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "expect",
}
_UPSTREAM_TIMEOUT_S = 60.0


class Fault(StrEnum):
    RESET = "reset"
    RESET_AFTER = "reset_after"
    STATUS_500 = "status_500"
    STATUS_503 = "status_503"
    STATUS_503_RETRY_AFTER = "status_503_retry_after"
    THROTTLE = "throttle"
    TRUNCATE = "truncate"
    WRONG_LENGTH = "wrong_length"
    STALL = "stall"
    REPLACE = "replace"
    CORRUPT = "corrupt"


#: what a random plan draws from by default (``corrupt`` is for forced rules only: a random
#: flipped byte is a different test, tests/e2e_stores/test_checksum.py)
ALL_RANDOM: tuple[Fault, ...] = tuple(f for f in Fault if f is not Fault.CORRUPT)
_BODY_FAULTS = {Fault.TRUNCATE, Fault.WRONG_LENGTH, Fault.CORRUPT}

#: the throttling answer of each backend: status, headers, body
_THROTTLE: dict[str, tuple[int, dict[str, str], bytes]] = {
    "s3": (
        503,
        {"Content-Type": "application/xml"},
        b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
        b"<Message>Please reduce your request rate.</Message></Error>",
    ),
    "azure": (
        503,
        {"Content-Type": "application/xml", "x-ms-error-code": "ServerBusy"},
        b'<?xml version="1.0" encoding="utf-8"?><Error><Code>ServerBusy</Code>'
        b"<Message>The server is busy.</Message></Error>",
    ),
    "gcs": (
        429,
        {"Content-Type": "application/json; charset=UTF-8"},
        json.dumps(
            {
                "error": {
                    "code": 429,
                    "message": "The rate of change requests to the object exceeds the rate limit.",
                    "errors": [{"reason": "rateLimitExceeded", "domain": "usageLimits"}],
                }
            }
        ).encode(),
    ),
    "swift": (498, {"Content-Type": "text/plain"}, b"Slow down"),
    "http": (429, {"Content-Type": "text/plain", "Retry-After": "1"}, b"Too Many Requests"),
}


@dataclass
class ProxyRecord:
    """One request as the proxy saw it and what it did with it."""

    method: str
    path: str  # percent-decoded, without the query
    query: str
    range: str | None  # Range, or Azure's x-ms-range
    #: the object a GCS multipart upload names in its JSON metadata part
    name: str | None = None
    fault: Fault | None = None
    #: time.monotonic() when the request arrived
    at: float = field(default_factory=time.monotonic)
    status: int = 0  # what the client was sent (0: nothing, a reset or a stall)
    forwarded: bool = False
    #: time.monotonic() when the request was sent upstream (0: it never was)
    forwarded_at: float = 0.0
    client_gave_up: bool = False  # a stalled client closed its end before the stall ended
    #: the replacement this request earned (run once its upstream answer is in)
    _replacement: _Replacement | None = field(default=None, repr=False, compare=False)

    def is_for(self, key: str) -> bool:
        """The request names ``key``: in its path, or (GCS uploads) in a ``name`` parameter."""
        if self.path.endswith("/" + key) or self.name == key:
            return True
        return key in parse_qs(self.query).get("name", ())


def draw(
    seed: int, rate: float, kinds: Sequence[Fault], method: str, path: str, rng: str | None, n: int
) -> Fault | None:
    """The fault of the ``n``-th request with this method, path and Range, under ``seed``."""
    if rate <= 0 or not kinds:
        return None
    r = random.Random(f"{seed}|{method}|{path}|{rng}|{n}")
    if r.random() >= rate:
        return None
    return kinds[r.randrange(len(kinds))]


@dataclass
class _Rule:
    fault: Fault
    key: str | None
    methods: frozenset[str] | None
    ranged: bool
    times: int | None
    where: Callable[[ProxyRecord], bool] | None = None

    def matches(self, rec: ProxyRecord) -> bool:
        if self.methods is not None and rec.method not in self.methods:
            return False
        if self.ranged and not rec.range:
            return False
        if self.where is not None and not self.where(rec):
            return False
        return self.key is None or rec.is_for(self.key)


@dataclass
class _Replacement:
    key: str
    replace: Callable[[], None]
    #: run on a thread this long after the answer instead of before it (None: before)
    delay_s: float | None = None
    #: set once a replacement before the answer has landed: requests for the key admitted
    #: after the one that earned it wait for it, so they all meet the new version
    landed: threading.Event = field(default_factory=threading.Event)


@dataclass
class _State:
    seed: int = 0
    rate: float = 0.0
    kinds: tuple[Fault, ...] = ALL_RANDOM
    seen: Counter[tuple[str, str, str | None]] = field(default_factory=Counter)
    rules: list[_Rule] = field(default_factory=list)
    replace: dict[str, _Replacement] = field(default_factory=dict)
    #: replacements before the answer that are under way
    landing: list[_Replacement] = field(default_factory=list)
    #: key -> (start, end) of its replacement, time.monotonic()
    replaced: dict[str, tuple[float, float]] = field(default_factory=dict)
    log: list[ProxyRecord] = field(default_factory=list)


class FaultProxy:
    def __init__(
        self,
        upstream: str,
        *,
        flavour: str = "http",
        seed: int = 0,
        rate: float = 0.0,
        kinds: Sequence[Fault] = ALL_RANDOM,
        stall_s: float = 5.0,
        stable: Callable[[str], str] | None = None,
    ) -> None:
        if flavour not in _THROTTLE:
            raise ValueError(f"flavour must be one of {sorted(_THROTTLE)}")
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.flavour = flavour
        self.stall_s = stall_s
        #: the path as the draw sees it: a bucket name made unique per run must not change
        #: which request gets which fault
        self.stable = stable or (lambda path: path)
        self._lock = threading.Lock()
        self._state = _State(seed=seed, rate=rate, kinds=tuple(kinds))
        self._stopping = threading.Event()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # -- steering ----------------------------------------------------------------------------

    def plan(
        self, *, rate: float, seed: int | None = None, kinds: Sequence[Fault] | None = None
    ) -> None:
        """Fault ``rate`` of the requests from now on (0 turns the random plan off)."""
        with self._lock:
            self._state.rate = rate
            if seed is not None:
                self._state.seed = seed
            if kinds is not None:
                self._state.kinds = tuple(kinds)

    def force(
        self,
        fault: Fault,
        *,
        key: str | None = None,
        methods: Sequence[str] | None = None,
        ranged: bool = False,
        times: int | None = None,
        where: Callable[[ProxyRecord], bool] | None = None,
    ) -> None:
        """Give ``fault`` to the next ``times`` requests (None: every one) for ``key``, of
        ``methods`` only (None: any), with a Range header only when ``ranged``, and for which
        ``where(record)`` holds when given (a listing of one prefix: its query names it)."""
        allowed = frozenset(m.upper() for m in methods) if methods is not None else None
        with self._lock:
            self._state.rules.append(_Rule(fault, key, allowed, ranged, times, where))

    def unforce(self, key: str | None = None) -> None:
        """Drop the forced rules (of ``key`` only, when given)."""
        with self._lock:
            self._state.rules = [r for r in self._state.rules if key is not None and r.key != key]

    def replace_on_read(
        self,
        key: str,
        replace: Callable[[], None],
        *,
        delay_s: float | None = None,
    ) -> None:
        """Let a ranged GET of ``key`` drawing ``replace`` call ``replace()`` (once): before
        its answer is sent, every request for ``key`` admitted after that GET waiting until
        it has landed (so every later read meets the new version); or, with ``delay_s``, on
        a thread that long after the answer, holding nothing back (a race)."""
        with self._lock:
            self._state.replace[key] = _Replacement(key, replace, delay_s)

    def replaced(self, key: str) -> tuple[float, float] | None:
        """When ``key`` was replaced (start, end of the callback, time.monotonic()), or None."""
        with self._lock:
            return self._state.replaced.get(key)

    def reset(self) -> None:
        """Forget rules, plan, occurrence counts and records (between tests)."""
        with self._lock:
            seed = self._state.seed
            self._state = _State(seed=seed)

    # -- what happened -----------------------------------------------------------------------

    def records(self, key: str | None = None, method: str | None = None) -> list[ProxyRecord]:
        with self._lock:
            log = list(self._state.log)
        return [
            r
            for r in log
            if (key is None or r.is_for(key)) and (method is None or r.method == method)
        ]

    def faults(self) -> Counter[Fault]:
        return Counter(r.fault for r in self.records() if r.fault is not None)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    # -- deciding (handler threads) ----------------------------------------------------------

    def _admit(
        self, method: str, raw_path: str, rng: str | None, name: str | None = None
    ) -> ProxyRecord:
        parts = urlsplit(raw_path)
        rec = ProxyRecord(method, unquote(parts.path), parts.query, rng, name)
        with self._lock:
            st = self._state
            st.log.append(rec)
            for rule in st.rules:
                if rule.matches(rec) and (rule.times is None or rule.times > 0):
                    if rule.times is not None:
                        rule.times -= 1
                    rec.fault = rule.fault
                    self._earn_replacement(rec)
                    return rec
            path = self.stable(rec.path)
            key = (method, path, rng)
            n = st.seen[key]
            st.seen[key] += 1
            kinds = st.kinds
            if not (rng and method == "GET" and self._replaceable(rec)):
                kinds = tuple(k for k in kinds if k is not Fault.REPLACE)
            rec.fault = draw(st.seed, st.rate, kinds, method, path, rng, n)
            self._earn_replacement(rec)
        return rec

    def _replaceable(self, rec: ProxyRecord) -> bool:
        return any(rec.is_for(k) for k in self._state.replace)

    def _earn_replacement(self, rec: ProxyRecord) -> None:
        """(Under the lock.) A ranged GET given ``replace`` takes its object's replacement at
        admission: from then on, other requests for the object wait for it to land."""
        st = self._state
        if rec.fault is not Fault.REPLACE or rec.method != "GET" or not rec.range:
            return
        for key, replacement in list(st.replace.items()):
            if rec.is_for(key):
                rec._replacement = st.replace.pop(key)
                if replacement.delay_s is None:
                    st.landing.append(replacement)
                return

    def _wait_for_landing(self, rec: ProxyRecord) -> None:
        """Hold ``rec`` until a replacement of its object that is under way has landed."""
        with self._lock:
            waits = [r.landed for r in self._state.landing if rec.is_for(r.key)]
        for landed in waits:
            landed.wait(_UPSTREAM_TIMEOUT_S)

    def _run_replacement(self, replacement: _Replacement) -> None:
        state = self._state  # a reset meanwhile must not receive this test's timings
        started = time.monotonic()
        try:
            replacement.replace()
        finally:
            with self._lock:
                state.replaced[replacement.key] = (started, time.monotonic())
                if replacement in state.landing:
                    state.landing.remove(replacement)
            replacement.landed.set()

    def _replace(self, rec: ProxyRecord) -> None:
        """Run the replacement ``rec`` earned: now (before its answer) or later on a thread."""
        replacement = rec._replacement
        if replacement is None:
            return
        rec._replacement = None
        if replacement.delay_s is None:
            self._run_replacement(replacement)
            return

        def later() -> None:
            time.sleep(replacement.delay_s or 0.0)
            self._run_replacement(replacement)

        threading.Thread(target=later, name="faultproxy-replace", daemon=True).start()


_META_NAME = re.compile(rb'"name"\s*:\s*"((?:[^"\\]|\\.)*)"')


def _upload_name(body: bytes | None) -> str | None:
    """The object name in the JSON metadata that opens a GCS multipart upload body."""
    if not body or b"application/json" not in body[:512].lower():
        return None
    m = _META_NAME.search(body[:4096])
    return json.loads(b'"' + m.group(1) + b'"') if m else None


def _is_json(resp: http.client.HTTPResponse) -> bool:
    return (resp.getheader("Content-Type") or "").startswith("application/json")


def _make_handler(proxy: FaultProxy) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            return None

        def _body(self) -> bytes | None:
            if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                out = bytearray()
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return bytes(out)
                    out += self.rfile.read(size)
                    self.rfile.readline()
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else None

        def _reset(self) -> None:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                self.connection.close()

        def _stall(self, rec: ProxyRecord) -> None:
            """Send nothing for ``stall_s``; notice when the client gives up first."""
            deadline = time.monotonic() + proxy.stall_s
            while not proxy._stopping.is_set() and time.monotonic() < deadline:
                readable, _, _ = select.select([self.connection], [], [], 0.05)
                if readable:
                    try:
                        gone = self.connection.recv(1, socket.MSG_PEEK) == b""
                    except OSError:
                        gone = True
                    if gone:
                        rec.client_gave_up = True
                        break
            self._reset()

        def _answer(
            self, rec: ProxyRecord, status: int, headers: dict[str, str], body: bytes
        ) -> None:
            rec.status = status
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _forward(self) -> None:
            body = self._body()
            rng = self.headers.get("Range") or self.headers.get("x-ms-range")  # Azure's own
            rec = proxy._admit(self.command, self.path, rng, _upload_name(body))
            fault = rec.fault
            if fault is Fault.RESET:
                return self._reset()
            if fault is Fault.STALL:
                return self._stall(rec)
            if fault in (Fault.STATUS_500, Fault.STATUS_503, Fault.STATUS_503_RETRY_AFTER):
                status = 500 if fault is Fault.STATUS_500 else 503
                extra = {"Retry-After": "1"} if fault is Fault.STATUS_503_RETRY_AFTER else {}
                return self._answer(rec, status, {"Content-Type": "text/plain", **extra}, b"")
            if fault is Fault.THROTTLE:
                status, headers, payload = _THROTTLE[proxy.flavour]
                return self._answer(rec, status, headers, payload)

            if rec._replacement is None:
                proxy._wait_for_landing(rec)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
            conn = http.client.HTTPConnection(
                proxy.upstream_host, proxy.upstream_port, timeout=_UPSTREAM_TIMEOUT_S
            )
            try:
                rec.forwarded_at = time.monotonic()
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            finally:
                conn.close()
            rec.forwarded = True
            if fault is Fault.RESET_AFTER:
                return self._reset()
            if fault in _BODY_FAULTS and (
                self.command == "HEAD" or len(data) < 2 or resp.status not in (200, 206)
            ):
                rec.fault = fault = None
            if fault is Fault.CORRUPT and _is_json(resp):
                # metadata and listings stay true: only object bytes are flipped
                rec.fault = fault = None
            if fault is Fault.CORRUPT:
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            if fault is Fault.REPLACE:
                # The answer holds the old version; the replacement lands before it is sent
                # (or, with a delay, at some moment of the reads that follow).
                proxy._replace(rec)
            rec.status = resp.status
            self.send_response(resp.status, resp.reason)
            for name, value in resp.getheaders():
                low = name.lower()
                if low in _HOP or (low == "content-length" and self.command != "HEAD"):
                    continue
                self.send_header(name, value)
            sent = data
            if fault is Fault.WRONG_LENGTH:
                sent = data[: len(data) // 2]
            if self.command != "HEAD":
                self.send_header("Content-Length", str(len(sent)))
            if fault in (Fault.TRUNCATE, Fault.WRONG_LENGTH):
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            if self.command != "HEAD" and sent:
                self.wfile.write(sent[: len(sent) // 2] if fault is Fault.TRUNCATE else sent)
            return None

        do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = do_PATCH = do_OPTIONS = _forward

    return Handler


@contextlib.contextmanager
def fault_proxy(
    upstream: str,
    *,
    flavour: str = "http",
    seed: int = 0,
    rate: float = 0.0,
    kinds: Sequence[Fault] = ALL_RANDOM,
    stall_s: float = 5.0,
    stable: Callable[[str], str] | None = None,
) -> Iterator[FaultProxy]:
    proxy = FaultProxy(
        upstream,
        flavour=flavour,
        seed=seed,
        rate=rate,
        kinds=kinds,
        stall_s=stall_s,
        stable=stable,
    )
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()
