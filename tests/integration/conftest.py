"""A real Redis, real Celery workers in subprocesses, a real HTTP server: haul as deployed."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from celery.result import AsyncResult

from tests.support.fixtures import BROKERS, broker_for, require_rabbitmq
from tests.support.httpserver import TestHTTPServer, serve
from tests.support.worker import start_worker
from worker.constants import TASK_QUEUES

TERMINAL = {
    "haul.prepare_inputs": ("haul.inputs.ready", "haul.inputs.failed"),
    "haul.store_outputs": ("haul.outputs.stored", "haul.outputs.failed"),
}


@dataclass
class Haul:
    """What an orchestrator and a dashboard see of a running haul worker."""

    redis_url: str
    data_dir: Path
    worker: Any
    #: the Celery broker (None: redis_url); a RabbitMQ vhost for the rabbitmq runs
    broker_url: str | None = None
    client: Celery = field(init=False)
    r: redis.Redis = field(init=False)

    def __post_init__(self) -> None:
        broker = self.broker_url or self.redis_url
        self.client = Celery("orchestrator", broker=broker, backend=self.redis_url)
        self.client.conf.update(task_serializer="json", accept_content=["json"])
        if broker.startswith("amqp"):
            # An outside client that names a queue declares it as Celery's default (classic)
            # type, which RabbitMQ refuses for haul's quorum queues: say "quorum" too.
            self.client.conf.task_create_missing_queue_type = "quorum"
        self.r = redis.Redis.from_url(self.redis_url, decode_responses=True)

    def send(self, task: str, message: Any) -> AsyncResult:
        return self.client.send_task(task, args=[message], queue=TASK_QUEUES[task])

    def run(self, task: str, message: Any, timeout: float = 60) -> tuple[str, Any]:
        """Send by name as an orchestrator would; wait for the task's final state."""
        result = self.send(task, message)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if result.state in ("SUCCESS", "FAILURE"):
                return result.state, result.result
            time.sleep(0.05)
        raise TimeoutError(f"{task} did not finish in {timeout} s; worker log:\n{self.log_tail()}")

    def events(self, subject: str | None = None, type_: str | None = None) -> list[dict[str, Any]]:
        out = []
        for _id, fields in self.r.xrange("haul:events"):
            ev = json.loads(fields["event"])
            if subject is not None and ev.get("subject") != subject:
                continue
            if type_ is not None and ev["type"] != type_:
                continue
            out.append(ev)
        return out

    def exec_dir(self, execution_id: str) -> Path:
        return self.data_dir / "executions" / execution_id

    def log_tail(self) -> str:
        try:
            return Path(self.worker.log_path).read_text()[-4000:]
        except OSError:
            return ""


def new_id(prefix: str = "exec") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def www(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestHTTPServer]:
    root = tmp_path_factory.mktemp("www")
    with serve(root) as srv:
        yield srv


def _db_url(base: str, db: int) -> str:
    return base.rsplit("/", 1)[0] + f"/{db}"


@pytest.fixture(scope="module", params=BROKERS)
def module_broker(request: pytest.FixtureRequest) -> str:
    """The module's tests run once per broker (Redis, and the machine's RabbitMQ)."""
    kind: str = request.param
    if kind == "rabbitmq":
        require_rabbitmq()
    return kind


@pytest.fixture(scope="module")
def haul(
    redis_srv: Any, module_broker: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Haul]:
    """One worker for the module, allowed to read the loopback test server."""
    data_dir = tmp_path_factory.mktemp("haul-data")
    share = tmp_path_factory.mktemp("share")
    url = _db_url(redis_srv.url, 1)
    redis.Redis.from_url(url).flushdb()
    with broker_for(module_broker, redis_srv, 1) as broker_url:
        yield from _haul(url, broker_url, data_dir, share)


def _haul(url: str, broker_url: str, data_dir: Path, share: Path) -> Iterator[Haul]:
    env = {
        "HAUL_ALLOW_PRIVATE_ADDRESSES": "true",
        "HAUL_STORES__SHARE__TYPE": "local",
        "HAUL_STORES__SHARE__PATH": str(share),
        "HAUL_MAX_ATTEMPTS": "2",
    }
    with start_worker(url, data_dir, extra_env=env, concurrency=2, broker_url=broker_url) as w:
        h = Haul(url, data_dir, w, broker_url)
        h.share = share  # type: ignore[attr-defined]
        yield h
