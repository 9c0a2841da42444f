"""``/metrics`` of ``haul web``: ``haul_queue_messages{queue}`` and ``haul_web_lag_events``.

Both are read when Prometheus scrapes (a custom collector): the number of messages waiting in
each haul queue, from the broker, and the consumer group's lag, from Redis. On Redis a kombu
queue is a list (plus one list per priority step); on RabbitMQ each queue is asked with a
passive ``queue.declare``, whose answer carries its ready message count, on a short-lived
connection of the scrape's own (it declares nothing, and a queue nobody declared yet has no
messages: 0). A broker that does not answer leaves the queue series out of that scrape.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from redis import Redis
from redis.exceptions import RedisError

from worker.constants import ALL_QUEUES

log = logging.getLogger(__name__)
# kombu's Redis transport: priority steps 0, 3, 6, 9; step 0 is the queue's own key.
_PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")
_AMQP_TIMEOUT_S = 5.0


class QueueDepths(Protocol):
    def lengths(self) -> dict[str, int]:
        """Messages waiting in each haul queue; raises when the broker does not answer."""
        ...


class RedisQueueDepths:
    def __init__(self, client: Redis) -> None:  # type: ignore[type-arg]
        self.client = client

    def lengths(self) -> dict[str, int]:
        try:
            pipe = self.client.pipeline(transaction=False)
            for queue in ALL_QUEUES:
                for suffix in _PRIORITY_SUFFIXES:
                    pipe.llen(queue + suffix)
            got = pipe.execute()
        except RedisError as exc:
            raise BrokerUnavailable(type(exc).__name__) from None
        step = len(_PRIORITY_SUFFIXES)
        return {q: sum(got[n * step : (n + 1) * step]) for n, q in enumerate(ALL_QUEUES)}


class AmqpQueueDepths:
    def __init__(self, url: str, timeout_s: float = _AMQP_TIMEOUT_S) -> None:
        self.url = url
        self.timeout_s = timeout_s

    def lengths(self) -> dict[str, int]:
        from kombu.connection import Connection

        counts: dict[str, int] = {}
        try:
            t = self.timeout_s  # a broker that accepts and then hangs must not hang a scrape
            options = {"read_timeout": t, "write_timeout": t}
            with Connection(self.url, connect_timeout=t, transport_options=options) as conn:  # type: ignore[no-untyped-call]
                channel: Any = conn.channel()
                for queue in ALL_QUEUES:
                    try:
                        _, messages, _ = channel.queue_declare(queue=queue, passive=True)
                    except conn.channel_errors as exc:
                        if getattr(exc, "code", None) != 404:
                            raise
                        # NOT_FOUND: never declared, nothing waits. The channel is closed.
                        counts[queue] = 0
                        channel = conn.channel()
                        continue
                    counts[queue] = int(messages)
        except Exception as exc:  # noqa: BLE001 (any failure to answer leaves the series out)
            raise BrokerUnavailable(type(exc).__name__) from None
        return counts


class BrokerUnavailable(Exception):
    """The broker did not say how many messages wait (the name of what went wrong)."""


def queue_depths(broker_url: str, redis: Redis | None = None) -> QueueDepths | None:  # type: ignore[type-arg]
    """The depth reader for ``broker_url`` (``redis``: a client of it when it is redis_url)."""
    if broker_url.startswith(("amqp://", "amqps://", "pyamqp://")):
        return AmqpQueueDepths(broker_url)
    if redis is not None:
        return RedisQueueDepths(redis)
    if broker_url.startswith(("redis://", "rediss://", "unix://")):
        return RedisQueueDepths(Redis.from_url(broker_url, socket_timeout=_AMQP_TIMEOUT_S))
    return None


class WebCollector(Collector):
    def __init__(self, depths: QueueDepths | None, lag: Callable[[], int | None]) -> None:
        self.depths = depths
        self.lag = lag

    def collect(self) -> Iterable[GaugeMetricFamily]:
        queues = GaugeMetricFamily(
            "haul_queue_messages", "Messages waiting in each haul queue", labels=["queue"]
        )
        if self.depths is not None:
            try:
                for queue, n in self.depths.lengths().items():
                    queues.add_metric([queue], n)
            except BrokerUnavailable as exc:
                log.warning("queue lengths unavailable: %s", exc)
        yield queues
        lag = GaugeMetricFamily(
            "haul_web_lag_events", "Events in the stream this dashboard has not projected yet"
        )
        value = self.lag()
        if value is not None:
            lag.add_metric([], value)
        yield lag


def registry(collector: WebCollector) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector)
    return reg
