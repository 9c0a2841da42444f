"""Is this worker connected to what it needs? Its broker and ``redis_url`` (section 11).

A background thread asks each dependency every ``interval_s`` with a short timeout, so
``/healthz`` answers at once from the last reading and turns 503 within about
``interval_s + timeout_s`` of losing one (the contract allows 10 s). Probes open their own
connections: the consumer's connection is Celery's and is not touched from another thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from worker.logs import redact_text

log = logging.getLogger("haul.health")


class Probe(Protocol):
    #: what the health answer calls it ("broker", "redis")
    name: str

    def check(self) -> None:
        """Return when the dependency answers; raise otherwise."""
        ...

    def close(self) -> None: ...


class RedisProbe:
    def __init__(self, name: str, url: str, timeout_s: float) -> None:
        import redis

        self.name = name
        self._client = redis.Redis.from_url(
            url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s
        )

    def check(self) -> None:
        self._client.ping()

    def close(self) -> None:
        self._client.close()


class AmqpProbe:
    """A fresh AMQP connection per check: a silently dead one would otherwise look alive
    until its heartbeat expired."""

    def __init__(self, name: str, url: str, timeout_s: float) -> None:
        self.name = name
        self._url = url
        self._timeout_s = timeout_s

    def check(self) -> None:
        from kombu.connection import Connection

        with Connection(self._url, connect_timeout=self._timeout_s) as conn:  # type: ignore[no-untyped-call]
            conn.connect()

    def close(self) -> None:
        return None


def probe_for(name: str, url: str, timeout_s: float) -> Probe:
    if url.startswith(("amqp://", "amqps://", "pyamqp://")):
        return AmqpProbe(name, url, timeout_s)
    return RedisProbe(name, url, timeout_s)


def probes_for(broker_url: str, redis_url: str, timeout_s: float = 2.0) -> list[Probe]:
    """One probe per distinct URL (a Redis broker that is ``redis_url`` is asked once)."""
    if broker_url == redis_url:
        return [probe_for("broker+redis", redis_url, timeout_s)]
    return [probe_for("broker", broker_url, timeout_s), probe_for("redis", redis_url, timeout_s)]


@dataclass(frozen=True)
class Reading:
    healthy: bool
    checks: dict[str, str]
    #: time.monotonic() of the reading
    at: float


class Health:
    def __init__(self, probes: Sequence[Probe], interval_s: float = 2.0) -> None:
        self._probes = list(probes)
        self._interval_s = interval_s
        self._reading = Reading(False, {p.name: "not checked yet" for p in probes}, 0.0)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def reading(self) -> Reading:
        return self._reading

    def check_once(self) -> Reading:
        checks: dict[str, str] = {}
        for probe in self._probes:
            try:
                probe.check()
            except Exception as exc:  # noqa: BLE001 (any failure to answer is "unhealthy")
                checks[probe.name] = redact_text(f"{type(exc).__name__}: {exc}")[:200]
            else:
                checks[probe.name] = "ok"
        healthy = all(v == "ok" for v in checks.values())
        if healthy != self._reading.healthy and self._reading.at:
            log.warning("health: %s (%s)", "ok" if healthy else "unhealthy", checks)
        self._reading = Reading(healthy, checks, time.monotonic())
        return self._reading

    def start(self) -> None:
        self.check_once()
        self._thread = threading.Thread(target=self._loop, name="haul-health", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.check_once()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        for probe in self._probes:
            probe.close()
