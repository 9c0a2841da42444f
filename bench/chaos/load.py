"""What the chaos run asks of haul, and an orchestrator that drives it through the kills.

Every execution reads the same inputs from nginx (one large object, fetched in parallel ranged
chunks, and a few small ones) and then stores its own outputs (one large, a few small; each
execution's bytes differ, so every upload really sends). The orchestrator keeps a few
executions in flight, follows the events stream (reconnecting while Redis restarts), sends
``haul.store_outputs`` once an execution's inputs are ready, and sends a message again only
when :mod:`worker.delivery` finds it nowhere (what docs/operating.md asks of an orchestrator on
Redis); everything else after a kill is haul's job (redelivery, leases).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from celery import Celery

from worker.constants import (
    EV_INPUTS_FAILED,
    EV_INPUTS_READY,
    EV_OUTPUTS_FAILED,
    EV_OUTPUTS_STORED,
    TASK_PREPARE_INPUTS,
    TASK_QUEUES,
    TASK_STORE_OUTPUTS,
)
from worker.delivery import DeliveryCheck, Sent

MiB = 1024 * 1024
PROJECT = "chaos"
#: the small inputs and outputs: name -> size
SMALL_INPUTS = {"s0.bin": 3_000, "s1.bin": 20_000, "s2.bin": 60_000, "s3.bin": 150_000}
SMALL_OUTPUTS = {"metrics.json": 400, "model.txt": 30_000, "sample.bin": 90_000}
#: phases before an outcome
_OPEN = ("new", "preparing", "storing")
#: bytes at the head of each output that make it this execution's own
_HEADER = 64


@dataclass
class Corpus:
    """The bytes of every input, and of every execution's outputs (derived, not kept)."""

    root: Path
    big_bytes: int
    seed: int
    inputs: dict[str, bytes] = field(default_factory=dict)
    _base: bytes = b""

    def write_inputs(self) -> None:
        rnd = random.Random(self.seed)
        self._base = rnd.randbytes(self.big_bytes)
        self.inputs = {"big.bin": self._base}
        for name, size in SMALL_INPUTS.items():
            self.inputs[name] = rnd.randbytes(size)
        self.root.mkdir(parents=True, exist_ok=True)
        for name, data in self.inputs.items():
            (self.root / name).write_bytes(data)

    def outputs(self, execution_id: str) -> dict[str, bytes]:
        def own(name: str, size: int) -> bytes:
            head = f"{execution_id}/{name}".encode().ljust(_HEADER, b".")[:_HEADER]
            return head + self._base[_HEADER:size]

        out = {"big.out": own("big.out", self.big_bytes)}
        out |= {name: own(name, size) for name, size in SMALL_OUTPUTS.items()}
        return out


@dataclass
class Execution:
    execution_id: str
    phase: str = "new"  # new, preparing, storing, done, inputs_failed, outputs_failed
    error: dict[str, Any] | None = None
    #: sha256 -> (name, bytes) of its outputs, once they are written
    outputs: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    #: every message sent for it: (task name, Celery task id, time.monotonic() when sent);
    #: the audit traces a lost execution's message through the broker and the worker's log
    sent: list[tuple[str, str, float]] = field(default_factory=list)
    #: the message it waits on, as worker.delivery checks it
    waiting: Sent | None = None


class Orchestrator:
    """Sends messages by task name as an orchestrator would; learns outcomes from the events."""

    def __init__(
        self,
        redis_url: str,
        data_dir: Path,
        base_url: str,
        corpus: Corpus,
        executions: int,
        in_flight: int,
        on_outputs: Callable[[Execution], None],
        broker_url: str | None = None,
        resend: bool = True,
    ) -> None:
        self.redis_url = redis_url
        self.data_dir = data_dir
        self.base_url = base_url
        self.corpus = corpus
        self.in_flight = in_flight
        self.on_outputs = on_outputs
        self.executions = {
            eid: Execution(eid) for eid in (f"chaos-{n:04d}" for n in range(executions))
        }
        broker_url = broker_url or redis_url
        amqp = broker_url.startswith("amqp")
        self.client = Celery("chaos-orchestrator", broker=broker_url)
        self.client.conf.update(
            task_serializer="json",
            accept_content=["json"],
            # what docs/operating.md asks of a RabbitMQ client: haul's queues are quorum queues
            task_create_missing_queue_type="quorum" if amqp else "classic",
            broker_transport_options={"confirm_publish": True} if amqp else {},
        )
        #: what docs/operating.md asks of an orchestrator on a Redis broker: a message found
        #: nowhere (a worker's main process killed in kombu's BRPOP window) is sent again
        self.check: DeliveryCheck | None = None
        if resend:
            results = redis.Redis.from_url(redis_url, socket_timeout=5)
            broker = None if amqp else redis.Redis.from_url(broker_url, socket_timeout=5)
            self.check = DeliveryCheck(broker, results)
        #: may execution number i be sent now? (the killer holds work back to stay in step)
        self.may_send: Callable[[int], bool] = lambda _i: True
        self._last_id = "0-0"
        self._lock = threading.Lock()
        self.redis_errors = 0

    # -- messages ----------------------------------------------------------------------------

    def _prepare_message(self, eid: str) -> dict[str, Any]:
        names = ["big.bin", *SMALL_INPUTS]
        inputs = [{"name": "big", "urls": [f"{self.base_url}/big.bin"]}]
        inputs.append(
            {"name": "small", "urls": [f"{self.base_url}/{n}" for n in names if n != "big.bin"]}
        )
        return {"execution_id": eid, "project_id": PROJECT, "inputs": inputs}

    def _send(self, ex: Execution, task: str, message: dict[str, Any], deadline: float) -> None:
        while True:
            try:
                result = self.client.send_task(task, args=[message], queue=TASK_QUEUES[task])
                ex.sent.append((task, result.id, time.monotonic()))
                ex.waiting = Sent(task, result.id, TASK_QUEUES[task], message)
                return
            except Exception:
                self.redis_errors += 1
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def _write_outputs(self, ex: Execution) -> None:
        out = self.data_dir / "executions" / ex.execution_id / "outputs"
        out.mkdir(parents=True, exist_ok=True)
        for name, data in self.corpus.outputs(ex.execution_id).items():
            ex.outputs[hashlib.sha256(data).hexdigest()] = (name, data)
            tmp = out.parent / f".{name}.writing"
            tmp.write_bytes(data)
            os.replace(tmp, out / name)  # the program's outputs appear whole
        self.on_outputs(ex)

    def _resend(self, sent: Sent) -> None:
        self.client.send_task(
            sent.task, args=[sent.message], queue=sent.queue, task_id=sent.task_id
        )

    def _check_delivery(self) -> None:
        """Every in-flight execution's message: resent when found nowhere (worker.delivery)."""
        if self.check is None:
            return
        for ex in self.executions.values():
            if ex.phase in ("preparing", "storing") and ex.waiting is not None:
                try:
                    self.check.resend_if_lost(ex.waiting, self._resend)
                except (redis.RedisError, OSError):
                    self.redis_errors += 1  # Redis restarting: look again next time

    # -- events ------------------------------------------------------------------------------

    def _follow(self, r: redis.Redis[str]) -> list[dict[str, Any]]:
        got = r.xread({"haul:events": self._last_id}, count=500, block=200)
        events = []
        for _stream, entries in got or []:
            for entry_id, fields in entries:
                self._last_id = entry_id
                events.append(json.loads(fields["event"]))
        return events

    def _on_event(self, ev: dict[str, Any], deadline: float) -> None:
        ex = self.executions.get(ev.get("subject") or "")
        if ex is None:
            return
        kind = ev["type"]
        if kind == EV_INPUTS_READY and ex.phase == "preparing":
            ex.phase = "storing"
            self._write_outputs(ex)
            message = {"execution_id": ex.execution_id, "project_id": PROJECT}
            self._send(ex, TASK_STORE_OUTPUTS, message, deadline)
        elif kind == EV_INPUTS_FAILED and ex.phase == "preparing":
            ex.phase, ex.error = "inputs_failed", ev["data"].get("error")
        elif kind == EV_OUTPUTS_STORED and ex.phase == "storing":
            ex.phase = "done"
        elif kind == EV_OUTPUTS_FAILED and ex.phase == "storing":
            ex.phase, ex.error = "outputs_failed", ev["data"].get("error")

    def active(self) -> int:
        return sum(1 for e in self.executions.values() if e.phase in ("preparing", "storing"))

    def outcomes(self) -> int:
        return sum(1 for e in self.executions.values() if e.phase not in _OPEN)

    def finished(self) -> bool:
        return self.outcomes() == len(self.executions)

    def run(self, deadline: float, stop: threading.Event) -> None:
        """Until every execution has its outcome, ``deadline`` passes or ``stop`` is set."""
        r = redis.Redis.from_url(self.redis_url, decode_responses=True, socket_timeout=5)
        pending = [e for e in self.executions.values() if e.phase == "new"]
        sent = len(self.executions) - len(pending)
        next_check = time.monotonic()
        while not stop.is_set() and time.monotonic() < deadline and not self.finished():
            if time.monotonic() >= next_check:
                self._check_delivery()
                next_check = time.monotonic() + 1.0
            while pending and self.active() < self.in_flight and self.may_send(sent):
                ex = pending.pop(0)
                sent += 1
                ex.phase = "preparing"
                self._send(
                    ex, TASK_PREPARE_INPUTS, self._prepare_message(ex.execution_id), deadline
                )
            try:
                events = self._follow(r)
            except redis.RedisError:
                self.redis_errors += 1
                time.sleep(0.2)
                continue
            for ev in events:
                self._on_event(ev, deadline)
        r.close()
