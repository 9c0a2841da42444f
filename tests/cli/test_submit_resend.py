"""`haul submit --wait` on Redis sends its message again when a consumer took it and died
before kombu recorded it (worker/delivery.py), under the same task id, and only then."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from redis import Redis

from tests.support.servers import RedisServer
from tests.support.worker import worker_env
from worker.delivery import CONFIRM_S, PRIORITY_STEPS

pytestmark = pytest.mark.integration


def _poll(check: object, timeout_s: float, what: str) -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = check()  # type: ignore[operator]
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout_s:g} s: {what}")


def _llen_calls(r: Redis[bytes]) -> int:
    stats = r.info("commandstats").get("cmdstat_llen", {})
    return int(stats.get("calls", 0)) if isinstance(stats, dict) else 0


def test_submit_wait_resends_a_message_popped_by_a_dead_consumer(
    redis_private: RedisServer, tmp_path: Path
) -> None:
    queue = f"haul.resend-{uuid.uuid4().hex[:6]}"  # no worker listens: the test is the consumer
    r: Redis[bytes] = Redis.from_url(redis_private.url)
    cmd = [
        sys.executable, "-m", "worker.cli",
        "submit", "outputs", "--execution", "e-resend", "--project", "p1",
        "--queue", queue, "--wait", "--timeout", "30", "--quiet",
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd,
        env=worker_env(redis_private.url, tmp_path / "data"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        popped = _poll(lambda: r.brpop([queue], timeout=1), 20, "the message is sent")
        first = json.loads(popped[1])  # type: ignore[index]
        # Dropped here, as a worker's main process killed before its unacked write drops it.
        # While it was queued nothing was sent again (the list held one message).
        again = _poll(lambda: r.brpop([queue], timeout=1), 20, "the message is sent again")
        second = json.loads(again[1])  # type: ignore[index]
        assert second["headers"]["id"] == first["headers"]["id"]
        assert second["body"] == first["body"]
        r.lpush(queue, again[1])  # type: ignore[index]
        # No third copy: every look the sender makes from now on finds the message queued.
        # Waited for by what the sender does (each look reads the queue's lists with LLEN): a
        # full look made after one confirmation gap would have resent a lost message.
        requeued_at = time.monotonic()
        _poll(lambda: time.monotonic() - requeued_at > CONFIRM_S, 20, "one confirmation gap")
        looked = _llen_calls(r)
        _poll(lambda: _llen_calls(r) >= looked + 2 * len(PRIORITY_STEPS), 20, "two more looks")
        assert r.llen(queue) == 1
    finally:
        proc.terminate()
        _out, err = proc.communicate(timeout=30)
        r.close()
    assert f"task {first['headers']['id']} was found nowhere on the broker; sent again" in err
    assert err.count("sent again") == 1, err
