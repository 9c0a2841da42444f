"""worker.delivery against a real Redis and real Celery publishes: where a sent message is, and
a message popped by a consumer that died before recording it is sent again, once."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from kombu import Connection

from tests.support.servers import RedisServer
from worker.constants import QUEUE_INPUTS, TASK_PREPARE_INPUTS
from worker.delivery import DeliveryCheck, Sent

pytestmark = pytest.mark.integration

MESSAGE = {"execution_id": "delivery-1", "project_id": "p"}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def world(redis_private: RedisServer) -> Iterator[tuple[Celery, redis.Redis[bytes], Clock]]:
    app = Celery("delivery-test", broker=redis_private.url)
    app.conf.task_serializer = "json"
    r = redis.Redis.from_url(redis_private.url)
    yield app, r, Clock()
    r.close()


def _send(app: Celery, task_id: str | None = None) -> Sent:
    result = app.send_task(TASK_PREPARE_INPUTS, args=[MESSAGE], queue=QUEUE_INPUTS, task_id=task_id)
    return Sent(TASK_PREPARE_INPUTS, result.id, QUEUE_INPUTS, MESSAGE)


def _resend(app: Celery) -> Any:
    return lambda s: _send(app, s.task_id)


def test_a_message_of_a_priority_step_is_found_in_its_queues_priority_list(world: Any) -> None:
    app, r, _ = world
    result = app.send_task(TASK_PREPARE_INPUTS, args=[MESSAGE], queue=QUEUE_INPUTS, priority=5)
    lists = [k for k in r.keys(f"{QUEUE_INPUTS}*") if r.type(k) == b"list"]
    assert lists == [f"{QUEUE_INPUTS}\x06\x163".encode()]  # kombu's step 3 list, not the queue's
    assert DeliveryCheck(r, r).where(result.id, QUEUE_INPUTS) == "queued"
    assert DeliveryCheck(r, r).where(result.id, "haul.other") == "nowhere"


def test_a_queued_message_is_queued_and_never_resent(world: Any) -> None:
    app, r, clock = world
    check = DeliveryCheck(r, r, clock=clock)
    sent = _send(app)
    for _ in range(3):
        assert check.where(sent.task_id, sent.queue) == "queued"
        assert not check.resend_if_lost(sent, _resend(app))
        clock.now += 10
    assert r.llen(QUEUE_INPUTS) == 1


def test_a_message_popped_by_a_dead_consumer_is_resent_once_after_two_looks(world: Any) -> None:
    """BRPOP without the unacked write after it: what a worker's main process killed in that
    window leaves. Found nowhere, twice, ``confirm_s`` apart: sent again under its task id."""
    app, r, clock = world
    check = DeliveryCheck(r, r, confirm_s=3.0, clock=clock)
    sent = _send(app)
    popped = r.brpop([QUEUE_INPUTS], timeout=5)
    assert popped is not None and sent.task_id.encode() in popped[1]
    assert check.where(sent.task_id, sent.queue) == "nowhere"
    assert not check.resend_if_lost(sent, _resend(app))  # first look: only noted
    clock.now += 1.0
    assert not check.resend_if_lost(sent, _resend(app))  # too soon to call it lost
    clock.now += 2.5
    assert check.resend_if_lost(sent, _resend(app))
    assert check.resent == [sent.task_id]
    assert sent.resends == 1
    queued = r.lrange(QUEUE_INPUTS, 0, -1)
    assert len(queued) == 1
    assert json.loads(queued[0])["headers"]["id"] == sent.task_id
    clock.now += 10
    assert not check.resend_if_lost(sent, _resend(app))  # queued again: left alone
    assert r.llen(QUEUE_INPUTS) == 1


def test_a_message_a_consumer_holds_unacked_is_not_resent(
    world: Any, redis_private: RedisServer
) -> None:
    app, r, clock = world
    check = DeliveryCheck(r, r, clock=clock)
    sent = _send(app)
    with Connection(redis_private.url) as conn:
        channel = conn.default_channel
        held = channel.basic_get(QUEUE_INPUTS, no_ack=False)  # kombu writes it to unacked
        assert held is not None
        assert check.where(sent.task_id, sent.queue) == "unacked"
        for _ in range(2):
            assert not check.resend_if_lost(sent, _resend(app))
            clock.now += 10
        channel.basic_ack(held.delivery_tag)
    assert check.where(sent.task_id, sent.queue) == "nowhere"


def test_a_started_task_is_found_by_its_state(world: Any) -> None:
    app, r, clock = world
    check = DeliveryCheck(r, r, clock=clock)
    sent = _send(app)
    r.delete(QUEUE_INPUTS)
    r.set(f"celery-task-meta-{sent.task_id}", json.dumps({"status": "STARTED"}))
    assert check.where(sent.task_id, sent.queue) == "started"


def test_without_a_redis_broker_the_answer_is_unknown(world: Any) -> None:
    app, r, clock = world
    check = DeliveryCheck(None, r, clock=clock)
    sent = Sent(TASK_PREPARE_INPUTS, "no-such-id", QUEUE_INPUTS, MESSAGE)
    assert check.where(sent.task_id, sent.queue) == "unknown"
    clock.now += 10
    assert not check.resend_if_lost(sent, _resend(app))
