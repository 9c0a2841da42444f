"""RabbitMQ as the broker, as an outside orchestrator meets it (contract section 11): the
worker declares every haul queue as a quorum queue, and a client with no haul configuration
that publishes by queue name and declares nothing (``declare=[]``) reaches each of them."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from celery import Celery

from tests.support import rabbitmq
from tests.support.fixtures import require_rabbitmq
from tests.support.worker import start_worker
from worker.constants import ALL_QUEUES, TASK_QUEUES


def _queue_types(vhost: str) -> dict[str, str]:
    done = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "-p", vhost, "name", "type"],
        check=True, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    rows = (line.split("\t") for line in done.stdout.splitlines())
    return {row[0]: row[1] for row in rows if len(row) == 2 and row[0] != "name"}


def test_quorum_queues_and_a_client_that_declares_nothing(redis_srv: Any, tmp_path: Path) -> None:
    """Every haul queue is a quorum queue once the worker is up; a bare Celery client sends
    each contract task by queue name with ``declare=[]`` and every one is run (a final state
    in the result backend), and the client declared no queue of its own."""
    require_rabbitmq()
    url = redis_srv.url_for_db(14)
    data_dir = tmp_path / "data"
    with (
        rabbitmq.rabbitmq_vhost() as broker,
        start_worker(url, data_dir, broker_url=broker),
    ):
        vhost = unquote(urlsplit(broker).path.lstrip("/"))
        types = _queue_types(vhost)
        assert {q: types.get(q) for q in ALL_QUEUES} == dict.fromkeys(ALL_QUEUES, "quorum")
        before = set(types)
        client = Celery("bare", broker=broker, backend=url)  # no haul settings at all
        messages = {
            "haul.prepare_inputs": {"execution_id": "e-bare", "project_id": "p", "inputs": []},
            "haul.store_outputs": {"execution_id": "e-bare", "project_id": "p"},
            "haul.purge": {"project_id": "p", "datum_ids": ["0" * 32]},
            "haul.watch_outputs": {"execution_id": "e-gone", "project_id": "p"},
        }
        results = {}
        for task, message in messages.items():
            results[task] = client.send_task(
                task, args=[message], queue=TASK_QUEUES[task], declare=[]
            )
        deadline = time.monotonic() + 60
        while any(r.state not in ("SUCCESS", "FAILURE") for r in results.values()):
            assert time.monotonic() < deadline, {t: r.state for t, r in results.items()}
            time.sleep(0.1)
        assert results["haul.prepare_inputs"].result["status"] == "ready"
        assert results["haul.purge"].result["unknown"] == ["0" * 32]
        assert set(_queue_types(vhost)) == before
