"""``haul web``'s ``haul_queue_messages{queue}`` on both brokers, against real ones.

Messages are sent with haul's own Celery configuration (quorum queues on RabbitMQ) and no
worker consumes them; the collector must count them on Redis (list lengths) and on RabbitMQ
(a passive ``queue.declare``), give 0 for a queue nobody declared yet, and leave the series
out, without failing the scrape, when the broker does not answer.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from prometheus_client import generate_latest

from dashboard.metrics import WebCollector, queue_depths, registry
from tasks.config import celery_config
from tests.support.fixtures import broker_for
from tests.support.servers import free_port
from worker.settings import load_settings


def _scrape(depths: Any) -> dict[str, float]:
    text = generate_latest(registry(WebCollector(depths, lambda: 0))).decode()
    return {
        m.group(1): float(m.group(2))
        for m in re.finditer(r'^haul_queue_messages\{queue="([^"]+)"\} (\S+)$', text, re.M)
    }


def test_queue_depths_on_each_broker(broker_kind: str, redis_private: Any, tmp_path: Path) -> None:
    with broker_for(broker_kind, redis_private, 3) as broker_url:
        settings = load_settings(
            {
                "HAUL_REDIS_URL": redis_private.url,
                "HAUL_BROKER_URL": broker_url,
                "HAUL_DATA_DIR": str(tmp_path),
            }
        )
        app = Celery("depth-test", set_as_current=False)
        app.conf.update(celery_config(settings))
        for _ in range(3):
            app.send_task("haul.prepare_inputs", args=[{}], queue="haul.inputs")
        depths = queue_depths(broker_url)
        assert depths is not None
        deadline = time.monotonic() + 10
        while (got := _scrape(depths)).get("haul.inputs") != 3.0:
            if time.monotonic() > deadline:
                pytest.fail(f"haul.inputs never showed 3 messages: {got}")
            time.sleep(0.1)
        # Every haul queue has a series; the ones nobody sent to hold nothing.
        assert got == {"haul.inputs": 3.0, "haul.outputs": 0.0, "haul.control": 0.0,
                       "haul.watch": 0.0}  # fmt: skip
        app.close()


def test_an_unreachable_rabbitmq_leaves_the_series_out() -> None:
    depths = queue_depths(f"amqp://guest:guest@127.0.0.1:{free_port()}//")
    assert _scrape(depths) == {}
