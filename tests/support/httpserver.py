"""A real, threaded HTTP/1.1 test server with fault injection.

Used in-process (``with serve(root) as srv: ...``) and as a separate process::

    python -m tests.support.httpserver --root DIR --port 0 [--tls]

which prints ``READY http://127.0.0.1:PORT`` on stdout (with ``--tls`` a line
``CAFILE /path/ca.pem`` comes first).  A separate process is steered through
``POST /_control`` with a JSON body ``{"op": NAME, ...kwargs}``; use
:class:`ControlClient` for that.

Routes:

* ``/<path>``                 - file under ``root`` (GET/HEAD, ranges, conditionals)
* ``/redirect/N/<path>``      - 302 chain of N hops ending at ``/<path>``
* ``/redirect-to?url=U``      - 302 (or ``&status=30x``) to the absolute URL ``U``
* ``/private/<path>``         - like ``/<path>`` (file ``root/private/<path>``), but
  needs HTTP basic auth ``u``/``p``
* ``POST /_control``          - fault/log control, never recorded in the request log

Bytes counted in ``bytes_sent`` are body bytes (not headers, not chunk framing).  A
request is appended to the log when it arrives; its ``status`` is filled in before
the headers go out and its ``bytes_sent`` before the body goes out (corrected if the
send fails), so once a client has read a response the record is already complete.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import email.utils
import fnmatch
import hashlib
import http.client
import http.server
import ipaddress
import json
import mimetypes
import os
import re
import signal
import socket
import ssl
import stat
import struct
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

__all__ = [
    "AUTH_PASSWORD",
    "AUTH_USER",
    "CONTROL_PATH",
    "ControlClient",
    "Faults",
    "RemoteStall",
    "RequestRecord",
    "Stall",
    "TestHTTPServer",
    "make_test_certificates",
    "serve",
]

CONTROL_PATH = "/_control"
PRIVATE_PREFIX = "/private/"
AUTH_USER = "u"
AUTH_PASSWORD = "p"
_HOST = "127.0.0.1"
_IO_CHUNK = 1 << 20  # pread/send chunk for TLS, chunked and corrupted bodies
_SENDFILE_CHUNK = 64 << 20
_ETAG_RE = re.compile(r'(W/)?"([^"]*)"')
_RANGE_RE = re.compile(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", re.IGNORECASE)
_REDIRECT_RE = re.compile(r"/redirect/(\d+)/(.*)", re.DOTALL)


# --------------------------------------------------------------------------- records


@dataclass
class RequestRecord:
    """One request as the server saw it.  ``headers`` keys are lower-case."""

    method: str
    path: str  # percent-decoded path, without the query
    query: str
    headers: dict[str, str]
    client_port: int  # identifies the TCP connection (keep-alive reuse => same port)
    status: int = 0  # 0 until the response status is decided
    bytes_sent: int = 0  # body bytes
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    error: str | None = None
    faults: list[str] = field(default_factory=list)  # names of fault rules applied

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    @property
    def range(self) -> str | None:
        return self.headers.get("range")

    @property
    def if_match(self) -> str | None:
        return self.headers.get("if-match")

    @property
    def if_none_match(self) -> str | None:
        return self.headers.get("if-none-match")

    @property
    def if_range(self) -> str | None:
        return self.headers.get("if-range")

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")

    @property
    def is_conditional(self) -> bool:
        return any(
            h in self.headers
            for h in ("if-match", "if-none-match", "if-modified-since", "if-unmodified-since")
        )

    @property
    def range_start(self) -> int | None:
        """First byte asked for by a ``bytes=a-[b]`` Range header (None for suffix/none)."""
        m = _RANGE_RE.fullmatch(self.range or "")
        return int(m.group(1)) if m and m.group(1) else None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RequestRecord:
        return cls(**dict(data))


# --------------------------------------------------------------------------- faults


class Stall:
    """Handle for a stall rule: the request waits until ``release()`` or the timeout."""

    def __init__(self, seconds: float | None, stall_id: int = 0) -> None:
        self.id = stall_id
        self.seconds = seconds
        self.reached = threading.Event()  # set when a request starts stalling
        self.released = threading.Event()
        self.hits = 0

    def release(self) -> None:
        self.released.set()

    def wait_reached(self, timeout: float = 10.0) -> bool:
        return self.reached.wait(timeout)

    def _block(self) -> None:
        self.hits += 1
        self.reached.set()
        self.released.wait(self.seconds)


@dataclass
class _Rule:
    kind: str
    pattern: str
    method: str | None
    times: int | None = 1  # None: forever
    skip: int = 0  # let this many matching requests through first
    params: dict[str, Any] = field(default_factory=dict)

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method.upper() != method:
            return False
        return _path_matches(self.pattern, path)


def _path_matches(pattern: str, path: str) -> bool:
    if pattern == path:
        return True
    return any(c in pattern for c in "*?[") and fnmatch.fnmatchcase(path, pattern)


@dataclass
class _Plan:
    applied: list[str] = field(default_factory=list)
    fail: _Rule | None = None
    reset: _Rule | None = None
    truncate_after: int | None = None
    stalls_before_headers: list[Stall] = field(default_factory=list)
    stalls_in_body: list[tuple[int, Stall]] = field(default_factory=list)
    ignore_range: bool = False
    advertise_ranges: bool = True
    omit_etag: bool = False
    no_content_length: bool = False
    chunked: bool = False
    corrupt_offsets: list[int] = field(default_factory=list)
    throttle_bps: int | None = None
    replace_content: bytes | None = None


Hook = Callable[[RequestRecord], None]


class Faults:
    """Thread-safe per-path fault rules.

    ``path`` is the percent-decoded request path (e.g. ``"/data.bin"``); it may be a
    glob (``"/shards/*"``, ``"*"``).  ``method`` restricts a rule to one HTTP method
    (None = any).  ``times`` is how many matching requests a rule affects (None =
    every one).  A rule is consumed when a matching request arrives, even if the
    response then turns out to be e.g. a 404/304 with no body.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[_Rule] = []
        self._hooks: list[tuple[str, str | None, Hook]] = []
        self._stalls: dict[int, Stall] = {}  # by id; kept after clear() for remote release

    def _add(self, rule: _Rule) -> None:
        if rule.times is not None and rule.times < 1:
            raise ValueError("times must be >= 1 or None")
        with self._lock:
            self._rules.append(rule)

    def fail_next(
        self,
        path: str,
        n: int = 1,
        status: int = 503,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"injected failure\n",
        method: str | None = None,
    ) -> None:
        """Answer the next ``n`` matching requests with ``status`` (e.g. 500/503/429)."""
        params = {"status": status, "headers": dict(headers or {}), "body": body}
        self._add(_Rule("fail", path, method, times=n, params=params))

    def truncate(
        self, path: str, after_bytes: int, *, times: int | None = 1, method: str | None = "GET"
    ) -> None:
        """Send headers promising the full length, ``after_bytes`` body bytes, then FIN."""
        self._add(_Rule("truncate", path, method, times=times, params={"after": after_bytes}))

    def reset_connection(
        self,
        path: str,
        nth: int = 1,
        *,
        after_bytes: int | None = None,
        times: int | None = 1,
        method: str | None = None,
    ) -> None:
        """RST (SO_LINGER 0 close) the connection on the ``nth`` matching request from now.

        ``after_bytes=None`` resets before any response byte; otherwise headers and
        ``after_bytes`` body bytes are sent first.
        """
        if nth < 1:
            raise ValueError("nth must be >= 1")
        self._add(
            _Rule("reset", path, method, times=times, skip=nth - 1, params={"after": after_bytes})
        )

    def stall(
        self,
        path: str,
        seconds: float | None = None,
        *,
        after_bytes: int = 0,
        before_headers: bool = False,
        times: int | None = 1,
        method: str | None = "GET",
    ) -> Stall:
        """Stall the response until ``Stall.release()`` (or ``seconds``, None = forever).

        By default after the headers, before the first body byte; ``after_bytes`` stalls
        mid-body, ``before_headers`` before anything is sent.  Server stop releases all.
        """
        with self._lock:
            handle = Stall(seconds, len(self._stalls))
            self._stalls[handle.id] = handle
        params = {"stall": handle, "after": after_bytes, "before_headers": before_headers}
        self._add(_Rule("stall", path, method, times=times, params=params))
        return handle

    def ignore_range(self, path: str, *, times: int | None = None, advertise: bool = False) -> None:
        """Answer 200 with the whole body even if a Range was asked for.

        ``Accept-Ranges`` is dropped unless ``advertise`` (a lying server).
        """
        self._add(_Rule("ignore_range", path, None, times=times, params={"advertise": advertise}))

    def omit_etag(self, path: str, *, times: int | None = None) -> None:
        """Do not send an ETag header (conditionals are still evaluated)."""
        self._add(_Rule("omit_etag", path, None, times=times))

    def no_content_length(
        self, path: str, *, chunked: bool = False, times: int | None = None
    ) -> None:
        """No Content-Length: ``Transfer-Encoding: chunked`` or a close-delimited body."""
        self._add(_Rule("no_content_length", path, None, times=times, params={"chunked": chunked}))

    def corrupt(self, path: str, offset: int, *, times: int | None = None) -> None:
        """Flip all bits of the byte at absolute file ``offset`` (if inside the sent range)."""
        self._add(_Rule("corrupt", path, "GET", times=times, params={"offset": offset}))

    def throttle(self, path: str, bytes_per_second: int, *, times: int | None = None) -> None:
        """Pace the body to about ``bytes_per_second``."""
        if bytes_per_second < 1:
            raise ValueError("bytes_per_second must be >= 1")
        self._add(_Rule("throttle", path, "GET", times=times, params={"bps": bytes_per_second}))

    def replace_after_first_read(
        self, path: str, content: bytes, *, after: int = 1, method: str | None = "GET"
    ) -> None:
        """Swap the file's content once ``after`` matching requests have been answered.

        ``path`` must be a literal request path.  The swap (atomic rename, so a new
        ETag) happens when the ``after``-th request has opened the file and before its
        body is sent: that response still carries the old content and ETag, every later
        request sees the new content, so a pinned ``If-Match`` read gets 412.
        """
        if after < 1:
            raise ValueError("after must be >= 1")
        rule = _Rule("replace", path, method, times=1, skip=after - 1, params={"content": content})
        self._add(rule)

    def on_request(self, hook: Hook, path: str = "*", *, method: str | None = None) -> None:
        """Run ``hook(record)`` in the handler thread before each matching request is
        served (after it is logged and counted in flight), e.g. ``threading.Barrier.wait``.
        An exception from the hook turns into a 500."""
        with self._lock:
            self._hooks.append((path, method, hook))

    def clear(self) -> None:
        """Drop all rules and hooks and release every stall."""
        with self._lock:
            self._rules.clear()
            self._hooks.clear()
        self.release_all()

    def release_all(self) -> None:
        """Release every stall ever created (also done by ``clear()`` and server stop)."""
        with self._lock:
            stalls = list(self._stalls.values())
        for s in stalls:
            s.release()

    def get_stall(self, stall_id: int) -> Stall:
        with self._lock:
            return self._stalls[stall_id]

    def pending(self) -> list[str]:
        """Kinds of the rules not yet used up (for debugging/assertions)."""
        with self._lock:
            return [f"{r.kind}:{r.pattern}" for r in self._rules]

    # ------------------------------------------------------------------ internals

    def _hooks_for(self, method: str, path: str) -> list[Hook]:
        with self._lock:
            return [
                h
                for p, m, h in self._hooks
                if (m is None or m.upper() == method) and _path_matches(p, path)
            ]

    def _take(self, method: str, path: str) -> _Plan:
        plan = _Plan()
        with self._lock:
            for rule in self._rules:
                if not rule.matches(method, path):
                    continue
                if (rule.kind == "fail" and plan.fail is not None) or (
                    rule.kind == "reset" and plan.reset is not None
                ):
                    continue
                if rule.skip > 0:
                    rule.skip -= 1
                    continue
                if rule.times is not None:
                    if rule.times <= 0:
                        continue
                    rule.times -= 1
                _apply(rule, plan)
                plan.applied.append(rule.kind)
            self._rules = [r for r in self._rules if r.times is None or r.times > 0]
        return plan


def _apply(rule: _Rule, plan: _Plan) -> None:
    p = rule.params
    match rule.kind:
        case "fail":
            plan.fail = rule
        case "reset":
            plan.reset = rule
        case "truncate":
            after = int(p["after"])
            plan.truncate_after = (
                after if plan.truncate_after is None else min(after, plan.truncate_after)
            )
        case "stall":
            if p["before_headers"]:
                plan.stalls_before_headers.append(p["stall"])
            else:
                plan.stalls_in_body.append((int(p["after"]), p["stall"]))
        case "ignore_range":
            plan.ignore_range = True
            plan.advertise_ranges = bool(p["advertise"])
        case "omit_etag":
            plan.omit_etag = True
        case "no_content_length":
            plan.no_content_length = True
            plan.chunked = bool(p["chunked"])
        case "corrupt":
            plan.corrupt_offsets.append(int(p["offset"]))
        case "throttle":
            plan.throttle_bps = int(p["bps"])
        case "replace":
            plan.replace_content = bytes(p["content"])
        case _:  # pragma: no cover
            raise AssertionError(rule.kind)


# --------------------------------------------------------------------------- helpers


class _Abort(Exception):
    """The connection was deliberately killed; stop handling it."""


class _Unsatisfiable(Exception):
    pass


def _parse_etags(value: str) -> list[tuple[bool, str]]:
    return [(bool(weak), tag) for weak, tag in _ETAG_RE.findall(value)]


def _parse_http_date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


def _parse_range(value: str, size: int) -> tuple[int, int] | None:
    """(first, last) inclusive, None to ignore the header; raises _Unsatisfiable."""
    m = _RANGE_RE.fullmatch(value)
    if m is None:  # bad syntax or a multi-range: ignore it and send 200
        return None
    a, b = m.groups()
    if not a and not b:
        return None
    if not a:
        n = int(b)
        if n == 0 or size == 0:
            raise _Unsatisfiable
        return max(0, size - n), size - 1
    first = int(a)
    if b and int(b) < first:
        return None
    if first >= size:
        raise _Unsatisfiable
    last = min(int(b), size - 1) if b else size - 1
    return first, last


# --------------------------------------------------------------------------- handler


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate sends
    server: _Server
    _rec: RequestRecord | None = None
    _sent = 0
    _pace_next = 0.0

    # ---------------------------------------------------------------- plumbing

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(None)  # os.sendfile needs a blocking socket
        self.server.owner._track(self.connection)

    def finish(self) -> None:
        try:
            with contextlib.suppress(OSError, ValueError):
                super().finish()
        finally:
            self.server.owner._untrack(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.owner.verbose:
            super().log_message(format, *args)

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except (_Abort, OSError):
            self.close_connection = True

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path, _ = self._split_target()
        if path != CONTROL_PATH:
            self._plain(405, b"method not allowed\n", {"Allow": "GET, HEAD"})
            return
        try:
            request = json.loads(body or b"{}")
            result = self.server.owner._control(request)
        except Exception as exc:  # report to the remote caller
            self._plain(400, json.dumps({"ok": False, "error": repr(exc)}).encode(), json_=True)
            return
        self._plain(200, json.dumps({"ok": True, **result}).encode(), json_=True)

    def _split_target(self) -> tuple[str, str]:
        target = self.path
        if target.startswith(("http://", "https://")):
            parts = urlsplit(target)
            target = parts.path + ("?" + parts.query if parts.query else "")
        raw_path, _, query = target.partition("?")
        return unquote(raw_path) or "/", query

    # ---------------------------------------------------------------- responses

    def _status(self, status: int) -> None:
        rec = self._rec
        if rec is not None:
            rec.status = status
        self.send_response(status)

    def _plain(
        self,
        status: int,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        *,
        json_: bool = False,
    ) -> None:
        self._status(status)
        ctype = "application/json" if json_ else "text/plain; charset=utf-8"
        hdrs = {"Content-Type": ctype, **(headers or {})}
        for k, v in hdrs.items():
            self.send_header(k, v)
        if status != 304:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body and status != 304:
            rec = self._rec
            if rec is not None:
                rec.bytes_sent = len(body)
            self.server.owner._add_bytes(len(body))
            self.wfile.write(body)

    def _reset(self) -> None:
        sock = self.connection
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with contextlib.suppress(OSError, ValueError):
            self.rfile.close()
        with contextlib.suppress(OSError):
            sock.close()
        self.close_connection = True
        raise _Abort

    # ---------------------------------------------------------------- dispatch

    def _dispatch(self) -> None:
        owner = self.server.owner
        path, query = self._split_target()
        if path == CONTROL_PATH:
            self._plain(405, b"POST only\n", {"Allow": "POST"})
            return
        headers: dict[str, str] = {}
        for k, v in self.headers.items():
            key = k.lower()
            headers[key] = f"{headers[key]}, {v}" if key in headers else v
        rec = RequestRecord(
            method=self.command,
            path=path,
            query=query,
            headers=headers,
            client_port=int(self.client_address[1]),
        )
        self._rec = rec
        owner._begin(rec)
        try:
            self._serve(rec, path, query)
        except _Abort:
            rec.error = rec.error or "aborted"
            raise
        except Exception as exc:
            rec.error = repr(exc)
            raise
        finally:
            owner._end(rec)
            self._rec = None

    def _serve(self, rec: RequestRecord, path: str, query: str) -> None:
        owner = self.server.owner
        for hook in owner.faults._hooks_for(self.command, path):
            try:
                hook(rec)
            except Exception as exc:
                rec.error = f"hook failed: {exc!r}"
                self._plain(500, b"hook failed\n")
                return
        plan = owner.faults._take(self.command, path)
        rec.faults = plan.applied
        if plan.reset is not None and plan.reset.params["after"] is None:
            self._reset()
        for stall in plan.stalls_before_headers:
            stall._block()
        if plan.fail is not None:
            p = plan.fail.params
            self._plain(int(p["status"]), bytes(p["body"]), p["headers"])
            return

        if path == "/private" or path.startswith(PRIVATE_PREFIX):
            expected = base64.b64encode(f"{AUTH_USER}:{AUTH_PASSWORD}".encode()).decode()
            if self.headers.get("Authorization", "").strip() != f"Basic {expected}":
                self._plain(401, b"auth required\n", {"WWW-Authenticate": 'Basic realm="haul"'})
                return

        if m := _REDIRECT_RE.fullmatch(path):
            hops = int(m.group(1))
            rest = quote(m.group(2))
            location = f"/redirect/{hops - 1}/{rest}" if hops > 1 else f"/{rest}"
            if query:
                location += "?" + query
            self._plain(302, b"", {"Location": location})
            return
        if path == "/redirect-to":
            qs = parse_qs(query)
            if "url" not in qs:
                self._plain(400, b"url= missing\n")
                return
            status = int(qs.get("status", ["302"])[0])
            self._plain(status, b"", {"Location": qs["url"][0]})
            return

        file = owner._resolve(path)
        if file is None:
            self._plain(403, b"forbidden\n")
            return
        try:
            f = file.open("rb")
        except OSError:
            self._plain(404, b"not found\n")
            return
        with f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                self._plain(404, b"not found\n")
                return
            self._serve_file(rec, plan, file, f, st)

    def _serve_file(
        self, rec: RequestRecord, plan: _Plan, file: Path, f: IO[bytes], st: os.stat_result
    ) -> None:
        owner = self.server.owner
        size = st.st_size
        etag = owner._etag(file, f, st)
        if plan.replace_content is not None:  # this response keeps serving the old inode
            owner._replace_file(file, plan.replace_content)
        last_modified = email.utils.formatdate(st.st_mtime, usegmt=True)
        validators = {"Last-Modified": last_modified}
        if not plan.omit_etag:
            validators["ETag"] = etag

        failed = self._preconditions(etag, st.st_mtime)
        if failed is not None:
            self._plain(failed, b"" if failed == 304 else b"precondition failed\n", validators)
            return

        byte_range: tuple[int, int] | None = None
        range_header = self.headers.get("Range")
        if (
            range_header
            and self.command == "GET"
            and not plan.ignore_range
            and self._if_range_ok(etag, st.st_mtime)
        ):
            try:
                byte_range = _parse_range(range_header, size)
            except _Unsatisfiable:
                self._plain(416, b"range not satisfiable\n", {"Content-Range": f"bytes */{size}"})
                return

        first, last = byte_range if byte_range is not None else (0, size - 1)
        length = last - first + 1
        self._status(206 if byte_range is not None else 200)
        ctype = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        self.send_header("Content-Type", ctype)
        if plan.no_content_length:
            if plan.chunked:
                self.send_header("Transfer-Encoding", "chunked")
            else:
                self.send_header("Connection", "close")
        else:
            self.send_header("Content-Length", str(length))
        if byte_range is not None:
            self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
        if not plan.ignore_range or plan.advertise_ranges:
            self.send_header("Accept-Ranges", "bytes")
        for k, v in validators.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command == "HEAD":
            return
        self._send_body(rec, plan, f, first, length)

    def _preconditions(self, etag: str, mtime: float) -> int | None:
        h = self.headers
        if_match = h.get("If-Match")
        if if_match is not None:
            tags = _parse_etags(if_match)
            if if_match.strip() != "*" and not any(
                not weak and f'"{t}"' == etag for weak, t in tags
            ):
                return 412
        else:
            since = _parse_http_date(h.get("If-Unmodified-Since"))
            if since is not None and int(mtime) > since:
                return 412
        if_none_match = h.get("If-None-Match")
        if if_none_match is not None:
            if if_none_match.strip() == "*" or any(
                f'"{t}"' == etag for _, t in _parse_etags(if_none_match)
            ):
                return 304 if self.command in ("GET", "HEAD") else 412
        else:
            since = _parse_http_date(h.get("If-Modified-Since"))
            if since is not None and int(mtime) <= since:
                return 304
        return None

    def _if_range_ok(self, etag: str, mtime: float) -> bool:
        value = self.headers.get("If-Range")
        if value is None:
            return True
        value = value.strip()
        if value.startswith(('"', "W/")):
            return any(not weak and f'"{t}"' == etag for weak, t in _parse_etags(value))
        when = _parse_http_date(value)
        return when is not None and int(mtime) == int(when)

    # ---------------------------------------------------------------- body

    def _send_body(
        self, rec: RequestRecord, plan: _Plan, f: IO[bytes], start: int, length: int
    ) -> None:
        owner = self.server.owner
        limit, cut = length, ""
        if plan.truncate_after is not None and plan.truncate_after < limit:
            limit, cut = max(0, plan.truncate_after), "truncate"
        if plan.reset is not None:
            after = int(plan.reset.params["after"])
            if after <= limit:
                limit, cut = max(0, after), "reset"

        points = {limit}
        stalls = [(a, s) for a, s in plan.stalls_in_body if a <= limit]
        points.update(a for a, _ in stalls)
        corrupt = {o - start for o in plan.corrupt_offsets if start <= o < start + limit}
        for c in corrupt:
            points.update((c, c + 1))

        rec.bytes_sent = limit
        owner._add_bytes(limit)
        self._sent = 0
        self._pace_next = time.monotonic()
        try:
            pos = 0
            for bp in sorted(points):
                if bp > pos:
                    if pos in corrupt and bp == pos + 1:
                        byte = os.pread(f.fileno(), 1, start + pos)
                        self._emit_bytes(bytes([byte[0] ^ 0xFF]), plan)
                    else:
                        self._emit_file(f, start + pos, bp - pos, plan)
                    pos = bp
                for after, stall in stalls:
                    if after == bp:
                        stall._block()
            if cut == "reset":
                self._reset()
            if cut == "truncate":
                self.close_connection = True
                return
            if plan.chunked:
                self.connection.sendall(b"0\r\n\r\n")
            elif plan.no_content_length:
                self.close_connection = True
        except OSError as exc:
            owner._add_bytes(self._sent - limit)
            rec.bytes_sent = self._sent
            rec.error = repr(exc)
            raise

    def _emit_file(self, f: IO[bytes], offset: int, count: int, plan: _Plan) -> None:
        fd = f.fileno()
        plain = not (self.server.owner.tls or plan.chunked or plan.throttle_bps)
        step = _SENDFILE_CHUNK if plain else _IO_CHUNK
        if plan.throttle_bps:
            step = max(1, min(step, plan.throttle_bps // 20))
        while count > 0:
            n = min(count, step)
            if plain:
                sent = os.sendfile(self.connection.fileno(), fd, offset, n)
                if sent == 0:
                    raise ConnectionError("sendfile sent nothing")
                self._sent += sent
            else:
                data = os.pread(fd, n, offset)
                if not data:
                    raise OSError("file shrank while serving")
                sent = len(data)
                self._emit_bytes(data, plan)
            offset += sent
            count -= sent

    def _emit_bytes(self, data: bytes, plan: _Plan) -> None:
        sock = self.connection
        if plan.chunked:
            sock.sendall(b"%x\r\n" % len(data))
        view = memoryview(data)
        while view:
            n = sock.send(view)
            self._sent += n
            view = view[n:]
        if plan.chunked:
            sock.sendall(b"\r\n")
        if plan.throttle_bps:
            self._pace_next += len(data) / plan.throttle_bps
            delay = self._pace_next - time.monotonic()
            if delay > 0:
                self.server.owner._closing.wait(delay)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, owner: TestHTTPServer, port: int, context: ssl.SSLContext | None) -> None:
        self.owner = owner
        self.ssl_context = context
        super().__init__((_HOST, port), _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        if self.ssl_context is not None:
            # handshake lazily in the handler thread, never in the accept loop
            sock = self.ssl_context.wrap_socket(
                sock, server_side=True, do_handshake_on_connect=False
            )
        return sock, addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError | _Abort | ValueError):
            return
        super().handle_error(request, client_address)


# --------------------------------------------------------------------------- server


class TestHTTPServer:
    """The server plus its log, counters and faults.  Use :func:`serve`."""

    __test__ = False  # not a pytest test class

    def __init__(
        self, root: Path | str, *, port: int = 0, tls: bool = False, verbose: bool = False
    ) -> None:
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise NotADirectoryError(self.root)
        self.tls = tls
        self.verbose = verbose
        self.faults = Faults()
        self.cafile: Path | None = None
        self._port_wanted = port
        self._lock = threading.Condition()
        self._records: list[RequestRecord] = []
        self._bytes_sent = 0
        self._in_flight = 0
        self._max_in_flight = 0
        self._etags: dict[tuple[str, int, int, int, int], str] = {}
        self._conns: set[socket.socket] = set()
        self._closing = threading.Event()
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> TestHTTPServer:
        context = None
        if self.tls:
            self._tmp = tempfile.TemporaryDirectory(prefix="haul-test-tls-")
            cafile, certfile, keyfile = make_test_certificates(Path(self._tmp.name))
            self.cafile = cafile
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(certfile, keyfile)
        self._server = _Server(self, self._port_wanted, context)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"test-httpserver-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._closing.set()
        self.faults.release_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> TestHTTPServer:
        return self.start() if self._server is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ addressing

    @property
    def port(self) -> int:
        assert self._server is not None, "server not started"
        return int(self._server.server_address[1])

    @property
    def host(self) -> str:
        return _HOST

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{_HOST}:{self.port}"

    def url(self, path: str = "/", *, auth: tuple[str, str] | None = None) -> str:
        """Absolute URL for ``path``; ``auth`` puts ``user:password@`` into it."""
        if not path.startswith("/"):
            path = "/" + path
        userinfo = f"{quote(auth[0], safe='')}:{quote(auth[1], safe='')}@" if auth else ""
        return f"{self.scheme}://{userinfo}{_HOST}:{self.port}{path}"

    def redirect_url(self, path: str, hops: int = 1) -> str:
        """URL that 302-redirects ``hops`` times and ends at ``/path``."""
        return self.url(f"/redirect/{hops}/{path.lstrip('/')}")

    def redirect_to_url(self, target: str, status: int = 302) -> str:
        """URL that redirects once to the arbitrary absolute URL ``target``."""
        return self.url(f"/redirect-to?url={quote(target, safe='')}&status={status}")

    def put_file(self, path: str, data: bytes) -> Path:
        """Atomically (re)write ``root/path`` (creating directories); return its path.

        Prefer this over writing in place: the ETag cache is keyed by (path, inode,
        mtime_ns, size), and an in-place rewrite with the same size within one
        filesystem timestamp tick would keep the old ETag.
        """
        dest = self.root / path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        self._replace_file(dest, data)
        return dest

    # ------------------------------------------------------------------ log/counters

    @property
    def requests(self) -> list[RequestRecord]:
        """Snapshot of the request log, oldest first (control requests excluded)."""
        with self._lock:
            return list(self._records)

    def requests_for(self, path: str, method: str | None = None) -> list[RequestRecord]:
        return [
            r
            for r in self.requests
            if _path_matches(path, r.path) and (method is None or r.method == method.upper())
        ]

    @property
    def bytes_sent(self) -> int:
        with self._lock:
            return self._bytes_sent

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    @property
    def max_in_flight(self) -> int:
        with self._lock:
            return self._max_in_flight

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "requests": len(self._records),
                "bytes_sent": self._bytes_sent,
                "in_flight": self._in_flight,
                "max_in_flight": self._max_in_flight,
            }

    def reset(self) -> None:
        """Clear faults (releasing stalls), the request log and the counters."""
        self.faults.clear()
        with self._lock:
            self._records.clear()
            self._bytes_sent = 0
            self._max_in_flight = self._in_flight

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until no request is being handled."""
        with self._lock:
            return self._lock.wait_for(lambda: self._in_flight == 0, timeout)

    def wait_for_requests(self, n: int, timeout: float = 10.0) -> bool:
        """Wait until at least ``n`` requests have arrived."""
        with self._lock:
            return self._lock.wait_for(lambda: len(self._records) >= n, timeout)

    # ------------------------------------------------------------------ internals

    def _track(self, conn: socket.socket) -> None:
        with self._lock:
            self._conns.add(conn)

    def _untrack(self, conn: socket.socket) -> None:
        with self._lock:
            self._conns.discard(conn)

    def _begin(self, rec: RequestRecord) -> None:
        with self._lock:
            self._records.append(rec)
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
            self._lock.notify_all()

    def _end(self, rec: RequestRecord) -> None:
        rec.finished = time.monotonic()
        with self._lock:
            self._in_flight -= 1
            self._lock.notify_all()

    def _add_bytes(self, n: int) -> None:
        with self._lock:
            self._bytes_sent += n

    def _resolve(self, path: str) -> Path | None:
        if "\x00" in path or "\\" in path:
            return None
        parts = [p for p in path.split("/") if p not in ("", ".")]
        if ".." in parts:
            return None
        candidate = self.root.joinpath(*parts).resolve()
        if not candidate.is_relative_to(self.root):
            return None
        return candidate

    def _etag(self, file: Path, f: IO[bytes], st: os.stat_result) -> str:
        key = (str(file), st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
        with self._lock:
            cached = self._etags.get(key)
        if cached is not None:
            return cached
        h = hashlib.sha1(usedforsecurity=False)
        fd, offset = f.fileno(), 0
        while chunk := os.pread(fd, 8 << 20, offset):
            h.update(chunk)
            offset += len(chunk)
        etag = f'"{h.hexdigest()[:16]}"'
        with self._lock:
            self._etags[key] = etag
        return etag

    def _replace_file(self, file: Path, content: bytes) -> None:
        tmp = file.with_name(f".{file.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_bytes(content)
        os.replace(tmp, file)
        resolved = str(file.resolve())
        with self._lock:
            for key in [k for k in self._etags if k[0] == resolved]:
                del self._etags[key]

    def _control(self, req: Mapping[str, Any]) -> dict[str, Any]:
        args = dict(req)
        op = str(args.pop("op"))
        f = self.faults
        if "content_b64" in args:
            args["content"] = base64.b64decode(args.pop("content_b64"))
        if "body_b64" in args:
            args["body"] = base64.b64decode(args.pop("body_b64"))
        simple: dict[str, Callable[..., Any]] = {
            "fail_next": f.fail_next,
            "truncate": f.truncate,
            "reset_connection": f.reset_connection,
            "ignore_range": f.ignore_range,
            "omit_etag": f.omit_etag,
            "no_content_length": f.no_content_length,
            "corrupt": f.corrupt,
            "throttle": f.throttle,
            "replace_after_first_read": f.replace_after_first_read,
            "clear": f.clear,
            "reset": self.reset,
        }
        if op in simple:
            simple[op](**args)
            return {}
        if op == "stall":
            return {"id": f.stall(**args).id}
        if op in ("release", "wait_stall"):
            handle = f.get_stall(int(args["id"]))
            if op == "release":
                handle.release()
                return {}
            return {"reached": handle.wait_reached(float(args.get("timeout", 10.0)))}
        if op == "requests":
            return {"requests": [r.to_json() for r in self.requests]}
        if op == "stats":
            return self.stats()
        if op == "wait_idle":
            return {"idle": self.wait_idle(float(args.get("timeout", 10.0)))}
        raise ValueError(f"unknown op {op!r}")


@contextlib.contextmanager
def serve(
    root: Path | str, *, tls: bool = False, verbose: bool = False
) -> Iterator[TestHTTPServer]:
    """Run a :class:`TestHTTPServer` on 127.0.0.1 (random port) for the block."""
    server = TestHTTPServer(root, tls=tls, verbose=verbose)
    server.start()
    try:
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------- TLS


def make_test_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """Write a throwaway CA and a server cert for 127.0.0.1/localhost into ``directory``.

    Returns ``(cafile, certfile, keyfile)``; trust ``cafile`` in the client.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)
    not_before, not_after = now - dt.timedelta(hours=1), now + dt.timedelta(days=7)

    def key_usage(*, cert_sign: bool) -> x509.KeyUsage:
        return x509.KeyUsage(
            digital_signature=True,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=cert_sign,
            crl_sign=cert_sign,
            encipher_only=False,
            decipher_only=False,
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "haul test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(_HOST))]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    cafile, certfile, keyfile = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    cafile.write_bytes(ca_cert.public_bytes(pem))
    certfile.write_bytes(cert.public_bytes(pem) + ca_cert.public_bytes(pem))
    keyfile.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    keyfile.chmod(0o600)
    return cafile, certfile, keyfile


# --------------------------------------------------------------------------- remote control


class RemoteStall:
    """A stall in a server running in another process."""

    def __init__(self, client: ControlClient, stall_id: int) -> None:
        self._client = client
        self.id = stall_id

    def release(self) -> None:
        self._client.call("release", id=self.id)

    def wait_reached(self, timeout: float = 10.0) -> bool:
        return bool(self._client.call("wait_stall", id=self.id, timeout=timeout)["reached"])


class ControlClient:
    """Drive the faults of a server in another process via ``POST /_control``.

    Same fault methods as :class:`Faults` (minus ``on_request``), plus ``requests()``,
    ``stats()``, ``reset()`` and ``wait_idle()``.  Bypasses any HTTP proxy.
    """

    def __init__(self, base_url: str, *, cafile: Path | str | None = None) -> None:
        parts = urlsplit(base_url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or _HOST
        self._port = parts.port or (443 if self._https else 80)
        self._context = ssl.create_default_context(cafile=str(cafile)) if cafile else None

    def call(self, op: str, **kwargs: Any) -> dict[str, Any]:
        conn: http.client.HTTPConnection
        if self._https:
            conn = http.client.HTTPSConnection(
                self._host, self._port, timeout=60, context=self._context
            )
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=60)
        try:
            body = json.dumps({"op": op, **kwargs}).encode()
            conn.request("POST", CONTROL_PATH, body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = json.loads(resp.read() or b"{}")
        finally:
            conn.close()
        if resp.status != 200 or not data.get("ok"):
            raise RuntimeError(f"control {op} failed: {resp.status} {data}")
        return dict(data)

    def fail_next(
        self,
        path: str,
        n: int = 1,
        status: int = 503,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"injected failure\n",
        method: str | None = None,
    ) -> None:
        self.call(
            "fail_next",
            path=path,
            n=n,
            status=status,
            headers=dict(headers or {}),
            body_b64=base64.b64encode(body).decode(),
            method=method,
        )

    def truncate(
        self, path: str, after_bytes: int, *, times: int | None = 1, method: str | None = "GET"
    ) -> None:
        self.call("truncate", path=path, after_bytes=after_bytes, times=times, method=method)

    def reset_connection(
        self,
        path: str,
        nth: int = 1,
        *,
        after_bytes: int | None = None,
        times: int | None = 1,
        method: str | None = None,
    ) -> None:
        self.call(
            "reset_connection",
            path=path,
            nth=nth,
            after_bytes=after_bytes,
            times=times,
            method=method,
        )

    def stall(
        self,
        path: str,
        seconds: float | None = None,
        *,
        after_bytes: int = 0,
        before_headers: bool = False,
        times: int | None = 1,
        method: str | None = "GET",
    ) -> RemoteStall:
        result = self.call(
            "stall",
            path=path,
            seconds=seconds,
            after_bytes=after_bytes,
            before_headers=before_headers,
            times=times,
            method=method,
        )
        return RemoteStall(self, int(result["id"]))

    def ignore_range(self, path: str, *, times: int | None = None, advertise: bool = False) -> None:
        self.call("ignore_range", path=path, times=times, advertise=advertise)

    def omit_etag(self, path: str, *, times: int | None = None) -> None:
        self.call("omit_etag", path=path, times=times)

    def no_content_length(
        self, path: str, *, chunked: bool = False, times: int | None = None
    ) -> None:
        self.call("no_content_length", path=path, chunked=chunked, times=times)

    def corrupt(self, path: str, offset: int, *, times: int | None = None) -> None:
        self.call("corrupt", path=path, offset=offset, times=times)

    def throttle(self, path: str, bytes_per_second: int, *, times: int | None = None) -> None:
        self.call("throttle", path=path, bytes_per_second=bytes_per_second, times=times)

    def replace_after_first_read(
        self, path: str, content: bytes, *, after: int = 1, method: str | None = "GET"
    ) -> None:
        self.call(
            "replace_after_first_read",
            path=path,
            content_b64=base64.b64encode(content).decode(),
            after=after,
            method=method,
        )

    def clear(self) -> None:
        self.call("clear")

    def reset(self) -> None:
        self.call("reset")

    def requests(self) -> list[RequestRecord]:
        return [RequestRecord.from_json(r) for r in self.call("requests")["requests"]]

    def stats(self) -> dict[str, int]:
        data = self.call("stats")
        return {k: int(v) for k, v in data.items() if k != "ok"}

    def wait_idle(self, timeout: float = 10.0) -> bool:
        return bool(self.call("wait_idle", timeout=timeout)["idle"])


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--root", required=True, type=Path, help="directory to serve")
    parser.add_argument("--port", type=int, default=0, help="0 = pick a free port")
    parser.add_argument("--tls", action="store_true", help="HTTPS with a throwaway CA")
    parser.add_argument("--verbose", action="store_true", help="access log on stderr")
    args = parser.parse_args(argv)

    server = TestHTTPServer(args.root, port=args.port, tls=args.tls, verbose=args.verbose)
    server.start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    parent = os.getppid()
    try:
        if server.cafile is not None:
            print(f"CAFILE {server.cafile}", flush=True)
        print(f"READY {server.base_url}", flush=True)
        while not stop.wait(0.5):
            if os.getppid() != parent:  # our test process died: do not linger
                break
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
