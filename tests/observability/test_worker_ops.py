"""A real worker as operators see it: /metrics over every pool process, /healthz following
its broker and Redis, JSON log lines with the task context, Celery's events and inspect."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import Haul, new_id
from tests.support.fixtures import broker_for
from tests.support.httpserver import TestHTTPServer, serve
from tests.support.worker import WorkerStartError, start_worker, worker_env
from worker.errors import ConfigError
from worker.observability.metrics import OUTCOMES, STORE_TYPES
from worker.settings import load_settings

ENV = {"HAUL_ALLOW_PRIVATE_ADDRESSES": "true"}
NO_GRACE = {"HAUL_SHUTDOWN_GRACE_S": "0"}
LABELS = {
    "store_type": set(STORE_TYPES),
    "direction": {"in", "out"},
    "outcome": set(OUTCOMES),
    "task": {"haul.prepare_inputs", "haul.store_outputs", "haul.purge", "haul.watch_outputs"},
}


def _until(cond: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.05)
    raise TimeoutError(what)


def _samples(base_url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(base_url + "/metrics", timeout=5).text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def www(tmp_path: Path) -> Iterator[TestHTTPServer]:
    root = tmp_path / "www"
    root.mkdir()
    with serve(root) as srv:
        yield srv


SECRET = "c2VjcmV0LXNpZ25hdHVyZQ"
#: a presigned URL's query: a credential (contract section 7)
SIGNED = f"?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature={SECRET}&X-Amz-Expires=600"


def _prepare(eid: str, url: str) -> dict[str, Any]:
    return {"execution_id": eid, "project_id": "proj-ops", "inputs": [{"name": "x", "urls": [url]}]}


def test_metrics_cover_every_pool_process_with_bounded_labels(
    redis_srv: Any, tmp_path: Path, www: TestHTTPServer
) -> None:
    """Downloads, cache hits, an input change, a stored output and a rejected message are all
    counted, summed over both pool processes, with label values from the fixed sets only; and
    every line haul's code wrote during a task carries the task context (JSON format)."""
    url = redis_srv.url_for_db(8)
    data_dir = tmp_path / "data"
    (www.root / "a.bin").write_bytes(b"a" * 5000)
    env = {**ENV, "HAUL_LOG_FORMAT": "json"}
    with broker_for("redis", redis_srv, 8), start_worker(url, data_dir, env, concurrency=2) as w:
        haul = Haul(url, data_dir, w)
        eids = [new_id() for _ in range(3)]
        for i, eid in enumerate(eids):
            if i == 2:  # new content at the same URL: a change, and a cache miss
                (www.root / "a.bin").write_bytes(b"b" * 6000)
                os.utime(www.root / "a.bin", (time.time() + 5, time.time() + 5))
            state, _ = haul.run("haul.prepare_inputs", _prepare(eid, www.url("/a.bin")))
            assert state == "SUCCESS", haul.log_tail()
        outputs = haul.exec_dir(eids[0]) / "outputs"
        outputs.mkdir(parents=True, exist_ok=True)
        (outputs / "model.bin").write_bytes(b"m" * 1234)
        state, _ = haul.run("haul.store_outputs", {"execution_id": eids[0], "project_id": "p"})
        assert state == "SUCCESS", haul.log_tail()
        state, value = haul.run("haul.prepare_inputs", {"execution_id": "x"})
        assert value["status"] == "rejected"
        base = w.metrics_url
        text = httpx.get(base + "/metrics", timeout=5).text
        samples = _samples(base)
        pids = {p.name.rsplit("_", 1)[-1] for p in (data_dir / "run").rglob("*.db")}
        log_lines = [json.loads(x) for x in w.log_text().splitlines() if x.startswith("{")]

    assert len(pids) >= 2, pids  # both pool processes write their own files
    assert _value(samples, "haul_files_total", direction="in", store_type="http") == 3
    assert _value(samples, "haul_transfer_bytes_total", direction="in", store_type="http") == (
        5000 + 5000 + 6000
    )
    assert _value(samples, "haul_files_total", direction="out", store_type="local") == 1
    assert _value(samples, "haul_transfer_bytes_total", direction="out", store_type="local") == 1234
    assert _value(samples, "haul_cache_hits_total") == 1
    assert _value(samples, "haul_cache_misses_total") >= 1
    assert _value(samples, "haul_input_changes_total") == 1
    assert _value(samples, "haul_worker_healthy") == 1
    ok = {"task": "haul.prepare_inputs", "outcome": "success"}
    assert _value(samples, "haul_task_seconds_count", **ok) == 3
    assert _value(samples, "haul_task_seconds_count", task="haul.store_outputs", outcome="success")
    rejected = {"task": "haul.prepare_inputs", "outcome": "rejected"}
    assert _value(samples, "haul_task_seconds_count", **rejected) == 1
    for (_name, labels), _v in samples.items():
        for key, value in labels:
            if key in LABELS:
                assert value in LABELS[key], (key, value)
    for eid in eids:
        assert eid not in text and "proj-ops" not in text

    # haul's own modules log as worker.*; every one of their lines here came from a task.
    during = [x for x in log_lines if x.get("logger", "").startswith("worker.")]
    assert any(x["logger"] == "worker.pipeline.prepare" for x in during), during
    for line in during:
        if line.get("execution_id") == "x":  # the rejected message names no project
            continue
        assert line.get("execution_id") in eids, line
        assert line.get("task") in {"haul.prepare_inputs", "haul.store_outputs"}, line
        assert line.get("project_id") in {"proj-ops", "p"}, line
    assert {x.get("task") for x in during} == {"haul.prepare_inputs", "haul.store_outputs"}
    succeeded = [x for x in log_lines if "succeeded in" in str(x.get("message"))]
    assert succeeded and all(x.get("execution_id") for x in succeeded)  # Celery's line too


def _unhealthy_after(outage: Callable[[], None], health: str) -> httpx.Response:
    """Start ``outage``; /healthz must answer 503 within 10 s of it. Returns that answer."""
    outage()
    began = time.monotonic()
    got: httpx.Response = _until(
        lambda: (r := httpx.get(health, timeout=5)).status_code == 503 and r,
        15,
        "healthz never turned 503",
    )
    assert time.monotonic() - began < 10
    return got


def test_healthz_follows_redis(redis_private: Any, tmp_path: Path) -> None:
    """/healthz is 200 while the worker reaches Redis (its broker here), 503 within 10 s of
    Redis going away, and 200 again once it is back."""
    with start_worker(redis_private.url, tmp_path / "data", ENV) as w:
        health = w.metrics_url + "/healthz"
        assert httpx.get(health, timeout=5).status_code == 200
        try:
            got = _unhealthy_after(redis_private.stop, health)
            assert got.json()["status"] == "unavailable"
        finally:
            redis_private.start()
        _until(lambda: httpx.get(health, timeout=5).status_code == 200, 15, "never healthy again")


def test_a_metrics_bind_that_cannot_be_bound_stops_the_worker(
    redis_srv: Any, tmp_path: Path
) -> None:
    """A taken port: the worker exits at start with a message naming metrics_bind."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**ENV, "HAUL_METRICS_BIND": f"127.0.0.1:{port}"}
        with (
            pytest.raises(WorkerStartError) as err,
            start_worker(redis_srv.url_for_db(9), tmp_path / "data", env),
        ):
            pass
    assert "metrics_bind" in str(err.value) and str(port) in str(err.value)
    assert "exited with code 78" in str(err.value)


def test_a_malformed_metrics_bind_is_a_settings_error() -> None:
    """Validated once at start, naming the key; empty turns the server off."""
    with pytest.raises(ConfigError, match="metrics_bind"):
        load_settings(environ={"HAUL_METRICS_BIND": "9808"})
    assert load_settings(environ={"HAUL_METRICS_BIND": ""}).metrics_bind == ""


def _send_shown_whole(haul: Haul, message: dict[str, Any]) -> Any:
    """As a client that writes the whole message into ``argsrepr`` (Celery's own client cuts
    nested values short; a client in another language need not)."""
    return haul.client.send_task(
        "haul.prepare_inputs", args=[message], queue="haul.inputs", argsrepr=json.dumps([message])
    )


def _receive(broker_url: str, seen: list[dict[str, Any]]) -> None:
    """What `celery events` and Flower do: capture every event the workers send."""
    from celery import Celery

    app = Celery(broker=broker_url)
    with app.connection() as conn:
        recv = app.events.Receiver(conn, handlers={"*": seen.append})
        # the test ended and its broker went (a Redis stopped, a vhost deleted: RabbitMQ then
        # cancels the consumer), each transport's own way
        gone = (TimeoutError, OSError, *conn.connection_errors, *conn.channel_errors)
        with contextlib.suppress(*gone):
            recv.capture(limit=None, timeout=60, wakeup=True)


def _celery_cli(env: dict[str, str], node: str, command: str) -> str:
    """`celery -A tasks inspect <command>` for one node (it returns once that node answers)."""
    cmd = [sys.executable, "-m", "celery", "-A", "tasks", "inspect", command]
    cmd += ["--destination", node, "--timeout", "10"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_celery_events_and_inspect_see_haul_tasks(
    redis_srv: Any, tmp_path: Path, www: TestHTTPServer, broker_kind: str
) -> None:
    """A real event receiver sees haul.prepare_inputs received, started and succeeded; while a
    slow one runs, `celery -A tasks inspect active` names it, `inspect ping` answers, and the
    worker's stats count the task. The inputs are presigned-looking URLs: their signatures
    are in no event Celery sends and in no answer of `inspect active`."""
    url = redis_srv.url_for_db(10)
    data_dir = tmp_path / "data"
    (www.root / "small.bin").write_bytes(b"s" * 100)
    (www.root / "slow.bin").write_bytes(os.urandom(4 * 1024 * 1024))
    www.faults.throttle("/slow.bin", 256 * 1024)
    with (
        broker_for(broker_kind, redis_srv, 10) as broker_url,
        # No grace at the end: the slow task is still running then.
        start_worker(url, data_dir, {**ENV, **NO_GRACE}, broker_url=broker_url) as w,
    ):
        seen: list[dict[str, Any]] = []
        threading.Thread(target=_receive, args=(broker_url, seen), daemon=True).start()
        # Events are broadcast: the receiver is listening once it hears the worker's heartbeat.
        _until(lambda: any(e["type"] == "worker-heartbeat" for e in seen), 30, "no heartbeat")
        haul = Haul(url, data_dir, w, broker_url)
        done = "task-succeeded"
        result = _send_shown_whole(haul, _prepare(new_id(), www.url("/small.bin") + SIGNED))
        mine = _until(
            lambda: [e for e in seen if e.get("uuid") == result.id and e["type"] == done],
            30,
            f"no task-succeeded event; saw {[e['type'] for e in seen]}",
        )
        assert mine[0]["hostname"].startswith("test-")
        types = {e["type"] for e in seen if e.get("uuid") == result.id}
        assert {"task-received", "task-started", "task-succeeded"} <= types
        received = next(e for e in seen if e["type"] == "task-received")
        assert received["name"] == "haul.prepare_inputs"
        assert "/small.bin" in received["args"]  # the message is shown, its signature is not
        assert not [e for e in seen if SECRET in json.dumps(e)]

        env = worker_env(url, data_dir, ENV, broker_url)
        slow = _send_shown_whole(haul, _prepare(new_id(), www.url("/slow.bin") + SIGNED))
        _until(lambda: slow.state == "STARTED", 30, "the slow task never started")
        node = w.hostname.replace("%h", socket.gethostname())
        active = _celery_cli(env, node, "active")
        assert "haul.prepare_inputs" in active and slow.id in active, active
        assert "/slow.bin" in active and SECRET not in active, active
        assert "pong" in _celery_cli(env, node, "ping")
        # stats through the same remote-control API the CLI uses (one CLI start is ~4 s here)
        stats = haul.client.control.inspect(destination=[node], timeout=10, limit=1).stats()
        assert stats is not None and stats[node]["total"].get("haul.prepare_inputs", 0) >= 1


def test_healthz_follows_a_rabbitmq_broker(redis_private: Any, tmp_path: Path) -> None:
    """With RabbitMQ as the broker, /healthz turns 503 within 10 s of the broker going away
    (a TCP proxy in front of the machine's RabbitMQ, cut: the shared server is not stopped)
    while Redis is fine, and 200 again once the broker is back."""
    from tests.support import rabbitmq
    from tests.support.fixtures import require_rabbitmq
    from tests.support.tcpproxy import tcp_proxy

    require_rabbitmq()
    with (
        rabbitmq.rabbitmq_vhost() as direct,
        tcp_proxy(rabbitmq.HOST, rabbitmq.PORT) as proxy,
    ):
        broker = direct.replace(f":{rabbitmq.PORT}/", f":{proxy.port}/")
        with start_worker(redis_private.url, tmp_path / "data", ENV, broker_url=broker) as w:
            health = w.metrics_url + "/healthz"
            assert httpx.get(health, timeout=5).status_code == 200
            got = _unhealthy_after(proxy.cut, health)
            body = got.json()
            assert body["status"] == "unavailable"
            assert body["checks"]["redis"] == "ok" and body["checks"]["broker"] != "ok"
            assert "guest:guest" not in got.text  # the probe's error names no credential
            proxy.restore()
            _until(lambda: httpx.get(health, timeout=5).status_code == 200, 15, "never healthy")


def test_an_undeclared_bucket_counts_under_its_store_type(
    redis_srv: Any, s3_srv: Any, tmp_path: Path
) -> None:
    """An input from an S3 bucket no store declares (read with the SDK's defaults) is counted
    with ``store_type="s3"``: its source's name is its URL's bucket, which once fell through
    to ``http``."""

    s3 = s3_srv.client()
    bucket = f"undeclared-{new_id('b')}"
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="in/a.bin", Body=b"s" * 3000)
    url = redis_srv.url_for_db(11)
    data_dir = tmp_path / "data"
    env = {
        **ENV,
        "AWS_ENDPOINT_URL": s3_srv.endpoint_url,
        **s3_srv.credentials_env(),
    }
    with broker_for("redis", redis_srv, 11), start_worker(url, data_dir, env) as w:
        haul = Haul(url, data_dir, w)
        state, summary = haul.run(
            "haul.prepare_inputs", _prepare(new_id(), f"s3://{bucket}/in/a.bin")
        )
        assert state == "SUCCESS" and summary["status"] == "ready", (summary, haul.log_tail())
        samples = _samples(w.metrics_url)
    assert _value(samples, "haul_files_total", direction="in", store_type="s3") == 1
    assert _value(samples, "haul_transfer_bytes_total", direction="in", store_type="s3") == 3000
    assert _value(samples, "haul_files_total", direction="in", store_type="http") == 0


@pytest.mark.parametrize("lost", ["broker", "redis"])
def test_healthz_follows_a_redis_broker_and_redis_url_each_on_its_own(
    redis_srv: Any, tmp_path: Path, lost: str
) -> None:
    """A Redis broker that is not ``redis_url``: losing either one (a TCP proxy in front of
    each, the one named cut) turns /healthz 503 within 10 s, naming the lost one while the
    other stays ok, and 200 again once it is back."""
    from tests.support.tcpproxy import tcp_proxy

    host, port = "127.0.0.1", redis_srv.port
    with tcp_proxy(host, port) as to_broker, tcp_proxy(host, port) as to_redis:
        broker = f"redis://{host}:{to_broker.port}/12"
        url = f"redis://{host}:{to_redis.port}/13"
        with start_worker(url, tmp_path / "data", ENV, broker_url=broker) as w:
            health = w.metrics_url + "/healthz"
            first = httpx.get(health, timeout=5)
            assert first.status_code == 200, first.text
            assert first.json()["checks"] == {"broker": "ok", "redis": "ok"}
            proxy = to_broker if lost == "broker" else to_redis
            got = _unhealthy_after(proxy.cut, health)
            checks = got.json()["checks"]
            kept = "redis" if lost == "broker" else "broker"
            assert checks[lost] != "ok" and checks[kept] == "ok", checks
            proxy.restore()
            _until(lambda: httpx.get(health, timeout=5).status_code == 200, 15, "never healthy")


def test_a_datum_input_counts_under_its_stores_type(
    redis_srv: Any, s3_srv: Any, tmp_path: Path
) -> None:
    """An output stored in an S3 store, read back twice as ``datum://<id>``: both reads count
    as ``store_type="s3"`` files and bytes in (the second a cache hit, counted as moved too),
    none as local or http."""
    s3 = s3_srv.client()
    bucket = new_id("lake")
    s3.create_bucket(Bucket=bucket)
    url = redis_srv.url_for_db(12)
    data_dir = tmp_path / "data"
    env = {
        **ENV,
        "HAUL_STORES__LAKE__TYPE": "s3",
        "HAUL_STORES__LAKE__BUCKET": bucket,
        "HAUL_STORES__LAKE__ENDPOINT_URL": s3_srv.endpoint_url,
        "HAUL_STORES__LAKE__REGION": s3_srv.region,
        **s3_srv.credentials_env(),
    }
    with broker_for("redis", redis_srv, 12), start_worker(url, data_dir, env) as w:
        haul = Haul(url, data_dir, w)
        producer = new_id()
        outputs = haul.exec_dir(producer) / "outputs"
        outputs.mkdir(parents=True)
        (outputs / "m.bin").write_bytes(b"m" * 2000)
        message = {"execution_id": producer, "project_id": "proj-ops", "store": "lake"}
        state, summary = haul.run("haul.store_outputs", message)
        assert state == "SUCCESS", haul.log_tail()
        datum = summary["datums"][0]["datum_id"]
        for _ in range(2):
            state, summary = haul.run("haul.prepare_inputs", _prepare(new_id(), f"datum://{datum}"))
            assert state == "SUCCESS" and summary["status"] == "ready", haul.log_tail()
        samples = _samples(w.metrics_url)
    assert _value(samples, "haul_files_total", direction="in", store_type="s3") == 2
    assert _value(samples, "haul_transfer_bytes_total", direction="in", store_type="s3") == 4000
    assert _value(samples, "haul_files_total", direction="out", store_type="s3") == 1
    assert _value(samples, "haul_cache_hits_total") == 1
    for other in ("local", "http"):
        assert _value(samples, "haul_files_total", direction="in", store_type=other) == 0
