"""A reverse proxy between haul and a real store server that flips bytes of chosen objects.

It forwards every request to the upstream server unchanged (the emulators do not check request
signatures, so the Host header may stay the proxy's) and, for a GET of an object whose path ends
with a key in :attr:`CorruptingProxy.keys`, flips the first byte of the body. HEAD answers and
JSON answers (GCS metadata, listings) pass untouched, so the server's stated checksum is the
true one while the bytes that arrive are not.
"""

from __future__ import annotations

import http.client
import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import unquote, urlsplit

_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
}


class CorruptingProxy:
    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.keys: set[str] = set()
        self.corrupted: dict[str, int] = {}
        self._lock = threading.Lock()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def corrupt(self, key: str) -> None:
        with self._lock:
            self.keys.add(key)

    def count(self, key: str) -> int:
        with self._lock:
            return self.corrupted.get(key, 0)

    def _target(self, method: str, path: str, content_type: str) -> str | None:
        """The key whose bytes this response carries, if they are to be corrupted."""
        if method != "GET" or content_type.startswith("application/json"):
            return None
        plain = unquote(urlsplit(path).path)
        with self._lock:
            for key in self.keys:
                if plain.endswith("/" + key):
                    self.corrupted[key] = self.corrupted.get(key, 0) + 1
                    return key
        return None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


def _make_handler(proxy: CorruptingProxy) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            return None

        def _forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
            conn = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=60)
            try:
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            finally:
                conn.close()
            content_type = resp.getheader("Content-Type") or ""
            if (
                data
                and resp.status in (200, 206)
                and proxy._target(self.command, self.path, content_type) is not None
            ):
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            self.send_response(resp.status, resp.reason)
            for name, value in resp.getheaders():
                low = name.lower()
                if low in _HOP or (low == "content-length" and self.command != "HEAD"):
                    continue
                self.send_header(name, value)
            if self.command != "HEAD":
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD" and data:
                self.wfile.write(data)

        do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = do_PATCH = _forward

    return Handler


@contextmanager
def corrupting_proxy(upstream: str) -> Iterator[CorruptingProxy]:
    proxy = CorruptingProxy(upstream)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()
