"""The worker's ``/metrics`` and ``/healthz`` on ``metrics_bind``, served by the main process.

``/metrics`` is prometheus_client's own WSGI app over the multiprocess registry (haul writes no
exposition code); ``/healthz`` is 200 or 503 with the last :class:`Health` reading as JSON.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from worker.binds import split_bind
from worker.errors import ConfigError
from worker.observability import multiproc
from worker.observability.health import Health

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

StartResponse = Callable[..., Any]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Prometheus scrapes every few seconds: no access line for each."""


class _HealthCollector:
    """``haul_worker_healthy``: /healthz as a series, so an alert can see "no worker healthy"."""

    def __init__(self, health: Health) -> None:
        self._health = health

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        yield GaugeMetricFamily(
            "haul_worker_healthy",
            "1 while this worker reaches its broker and redis_url (what /healthz answers).",
            value=1.0 if self._health.reading.healthy else 0.0,
        )


class MetricsServer:
    def __init__(self, bind: str, metrics_dir: Path | None, health: Health) -> None:
        from prometheus_client import CollectorRegistry, make_wsgi_app

        self._dir = metrics_dir
        registry = (
            multiproc.registry(metrics_dir) if metrics_dir is not None else CollectorRegistry()
        )
        registry.register(_HealthCollector(health))
        self._metrics = make_wsgi_app(registry)
        self._health = health
        host, port = split_bind(bind)
        cls = _Server6 if ":" in host else _Server
        try:
            self._httpd = make_server(host, port, self._app, cls, _QuietHandler)
        except OSError as exc:
            raise ConfigError(
                f"metrics_bind: cannot listen on {bind}: {exc.strerror or exc}"
            ) from None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def address(self) -> str:
        """``host:port`` as bound (the real port when ``metrics_bind`` asked for port 0)."""
        host = str(self._httpd.server_address[0])
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    def _app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            if self._dir is not None:
                multiproc.sweep(self._dir)
            body: Iterable[bytes] = self._metrics(environ, start_response)
            return body
        if path == "/healthz":
            reading = self._health.reading
            doc = {"status": "ok" if reading.healthy else "unavailable", "checks": reading.checks}
            status = "200 OK" if reading.healthy else "503 Service Unavailable"
            data = json.dumps(doc).encode()
            start_response(status, [("Content-Type", "application/json")])
            return [data]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: /metrics and /healthz are served here\n"]

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="haul-metrics", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
