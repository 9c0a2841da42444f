"""Redis goes down while the worker holds an unacknowledged message: the worker stays up.

Celery 5.7's consumer, on a broker connection error, calls ``connection.collect()`` and then
``connection.close()``; with Redis still down and a message held (here: a copy waiting out a
live lease), the second close rebuilt a pool from the detached transport and raised
``AttributeError: 'NoneType' object has no attribute 'hostname'`` in kombu's
``Channel._connparams``, and the worker's main process exited ("Unrecoverable error"; found by
bench/chaos, reproduced here on the first outage). ``tasks/transport.py`` turns it into a
connection error.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import redis
from celery import Celery

from tasks import transport
from tests.support.servers import redis_server
from tests.support.worker import WorkerProcess, start_worker
from worker.constants import EV_INPUTS_READY, KEY_LEASE, QUEUE_INPUTS, TASK_PREPARE_INPUTS

pytestmark = pytest.mark.integration

OUTAGES = 2


def _wait(check: object, timeout_s: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.05)
    tail = f"\n--- the worker's log, last lines ---\n{log.read_text()[-4000:]}" if log else ""
    raise AssertionError(f"not within {timeout_s:g} s: {what}{tail}")


#: what Celery's consumer logs when it finds the broker gone: "lost" from its running loop,
#: "Cannot connect" when the outage comes while it is still starting again after the last one
#: (it logs "Connected to" before its loop runs: CI met that, and waited for "lost" in vain)
GONE = ("Connection to broker lost", "Cannot connect to")


def _count(w: WorkerProcess, texts: tuple[str, ...]) -> int:
    log = w.log_path.read_text()
    return sum(log.count(t) for t in texts)


def _until_logged(w: WorkerProcess, texts: tuple[str, ...], before: int, what: str) -> None:
    """Until the worker's log holds ``texts`` more than ``before`` times (or it exited)."""
    _wait(
        lambda: w.proc.poll() is not None or _count(w, texts) > before,
        60,
        f"the worker: {what}",
        w.log_path,
    )


def test_the_guard_wraps_kombus_connparams_once() -> None:
    transport.install()
    transport.install()
    from kombu.transport import redis as kombu_redis

    wrapped = kombu_redis.Channel._connparams
    assert getattr(wrapped, "haul_guarded", False)
    assert not getattr(wrapped.__wrapped__, "haul_guarded", False)


def test_worker_survives_redis_outages_while_it_holds_a_message(tmp_path: Path) -> None:
    """Twice Redis stops for a second while the worker holds a copy waiting out a lease: the
    main process stays up, reconnects, and once the lease is gone the message is handled (it
    was kept in kombu's ``unacked`` hash and handed out again)."""
    env = {
        "HAUL_LEASE_RETRY_S": "1",
        "HAUL_BROKER_VISIBILITY_TIMEOUT_S": "10",
        "HAUL_METRICS_BIND": "",
    }
    eid = "outage-held-1"
    lease = f"{KEY_LEASE}:{TASK_PREPARE_INPUTS}:{eid}"
    with redis_server(tmp_path / "redis", appendonly=True) as srv:
        r = redis.Redis.from_url(srv.url)
        r.set(lease, "another-worker", px=600_000)
        with start_worker(srv.url, tmp_path / "data", extra_env=env, concurrency=2) as w:
            client = Celery("outage-client", broker=srv.url)
            client.conf.task_serializer = "json"
            client.send_task(
                TASK_PREPARE_INPUTS,
                args=[{"execution_id": eid, "project_id": "p"}],
                queue=QUEUE_INPUTS,
            )
            _wait(lambda: "retry: Retry" in w.log_path.read_text(), 30, "the copy waits")
            for n in range(OUTAGES):
                lost = _count(w, GONE)
                srv.stop()
                # Redis stays down until the worker has seen it go (Celery's consumer says so).
                _until_logged(w, GONE, lost, f"outage {n + 1} seen")
                connected = _count(w, ("Connected to",))
                srv.start()
                _until_logged(w, ("Connected to",), connected, f"reconnected after outage {n + 1}")
                log = w.log_path.read_text()
                assert w.proc.poll() is None, log[-4000:]
                assert "Unrecoverable error" not in log, log[-4000:]
            r = redis.Redis.from_url(srv.url)
            r.delete(lease)

            def ready() -> bool:
                for _id, fields in r.xrange("haul:events"):
                    ev = json.loads(fields[b"event"])
                    if ev["type"] == EV_INPUTS_READY and ev["subject"] == eid:
                        return True
                return False

            _wait(ready, 90, "the held message is handled after the outages")
