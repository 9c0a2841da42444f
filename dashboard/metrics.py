"""``/metrics`` of ``haul web``: ``haul_queue_messages{queue}`` and ``haul_web_lag_events``.

Both are read when Prometheus scrapes (a custom collector), from Redis: the length of each haul
queue's list (kombu keeps a Redis queue as a list, plus one list per priority step) and the
consumer group's lag. With a RabbitMQ broker the queue series are absent: RabbitMQ's own
exporter has them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from redis import Redis
from redis.exceptions import RedisError

from worker.constants import ALL_QUEUES

log = logging.getLogger(__name__)
# kombu's Redis transport: priority steps 0, 3, 6, 9; step 0 is the queue's own key.
_PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")


class WebCollector(Collector):
    def __init__(
        self,
        broker: Redis | None,  # type: ignore[type-arg]
        lag: Callable[[], int | None],
    ) -> None:
        self.broker = broker
        self.lag = lag

    def collect(self) -> Iterable[GaugeMetricFamily]:
        queues = GaugeMetricFamily(
            "haul_queue_messages", "Messages waiting in each haul queue", labels=["queue"]
        )
        if self.broker is not None:
            try:
                pipe = self.broker.pipeline(transaction=False)
                for queue in ALL_QUEUES:
                    for suffix in _PRIORITY_SUFFIXES:
                        pipe.llen(queue + suffix)
                lengths = pipe.execute()
                step = len(_PRIORITY_SUFFIXES)
                for n, queue in enumerate(ALL_QUEUES):
                    queues.add_metric([queue], sum(lengths[n * step : (n + 1) * step]))
            except RedisError as exc:
                log.warning("queue lengths unavailable: %s", type(exc).__name__)
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
