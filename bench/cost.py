"""The cost of one execution at the worker, against Celery's own floor (issue 9).

``python -m bench.cost [--count N] [--brokers redis,rabbitmq] [--sizes 10k,10M]``

One real worker (``celery -A bench.costapp worker``: haul's app plus a no-op task and stage
timers), 2 pool processes, on a real broker. An execution is ``haul.prepare_inputs`` of one
input that is already in the worker's cache (its validation is a HEAD to the local HTTP
server), then ``haul.store_outputs`` of one new 1 MB file into the local store. Two client
threads keep two executions in flight (one per pool process), each waiting for a task's result
before sending the next. The floor is the same number of ``bench.noop`` tasks (two per
execution) sent the same way to the same worker. Printed: executions/s, p50/p95 latency of one
execution, the ratio to the floor, and where the worker's time went (stage timers summed over
the pool processes). A measurement, not a test.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import redis as redis_lib
from celery import Celery

from tests.support import rabbitmq, servers
from tests.support.httpserver import serve
from tests.support.worker import start_worker

SIZES = {"10k": 10_000, "10M": 10_000_000}
IN_FLIGHT = 2
MB = 1_000_000


def _client(broker_url: str, redis_url: str) -> Celery:
    app = Celery("bench-client", broker=broker_url, backend=redis_url)
    app.conf.update(task_serializer="json", accept_content=["json"])
    if broker_url.startswith("amqp"):
        app.conf.task_create_missing_queue_type = "quorum"
    return app


def _closed_loop(n: int, one: Callable[[int], None]) -> tuple[float, list[float]]:
    """``n`` calls of ``one(i)`` on IN_FLIGHT threads; wall time and each call's latency."""
    latencies: list[float] = []
    lock = threading.Lock()
    counter = iter(range(n))

    def loop() -> None:
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            t = time.perf_counter()
            one(i)
            with lock:
                latencies.append(time.perf_counter() - t)

    threads = [threading.Thread(target=loop) for _ in range(IN_FLIGHT)]
    start = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return time.perf_counter() - start, latencies


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_one(broker: str, size: str, count: int, root: Path, redis: Any) -> dict[str, Any]:
    url = redis.url_for_db(13)
    client_redis = redis_lib.Redis.from_url(url)
    client_redis.flushdb()
    data = root / f"data-{broker}-{size}"
    www_root = root / f"www-{size}"
    www_root.mkdir(parents=True, exist_ok=True)
    (www_root / "input.bin").write_bytes(os.urandom(SIZES[size]))
    eids = [f"exec-{uuid.uuid4().hex[:12]}" for _ in range(count + 1)]
    for eid in eids:  # one new 1 MB output per execution: nothing is deduplicated
        out = data / "executions" / eid / "outputs"
        out.mkdir(parents=True)
        (out / "model.bin").write_bytes(os.urandom(MB))
    env = {"HAUL_ALLOW_PRIVATE_ADDRESSES": "true"}
    with ExitStack() as stack:
        www = stack.enter_context(serve(www_root))
        broker_url = stack.enter_context(rabbitmq.rabbitmq_vhost()) if broker == "rabbitmq" else url
        worker = stack.enter_context(
            start_worker(url, data, env, concurrency=2, broker_url=broker_url, app="bench.costapp")
        )
        app = _client(broker_url, url)

        def task(name: str, queue: str, message: Any) -> None:
            args = [message] if message is not None else []
            result = app.send_task(name, args=args, queue=queue)
            value = result.get(timeout=120)
            if isinstance(value, dict) and value.get("status") not in (None, "ok", "ready",
                                                                          "stored"):  # fmt: skip
                raise RuntimeError(f"{name}: {value}")

        def execution(i: int) -> None:
            eid = eids[i]
            task("haul.prepare_inputs", "haul.inputs", {
                "execution_id": eid, "project_id": "bench",
                "inputs": [{"name": "x", "urls": [www.url("/input.bin")]}],
            })  # fmt: skip
            task("haul.store_outputs", "haul.outputs", {"execution_id": eid, "project_id": "bench"})

        def floor(_i: int) -> None:
            task("bench.noop", "haul.inputs", None)
            task("bench.noop", "haul.outputs", None)

        def burst(messages: list[tuple[str, str, Any]]) -> float:
            """Everything sent at once, then every result awaited: the worker's throughput."""
            start = time.perf_counter()
            results = [
                app.send_task(n, args=[m] if m is not None else [], queue=q) for n, q, m in messages
            ]
            for r in results:
                r.get(timeout=600)
            return time.perf_counter() - start

        execution(count)  # the first reading fills the cache; not measured
        client_redis.delete("bench:cost:seconds", "bench:cost:calls")
        half = count // 2
        wall, lat = _closed_loop(half, execution)
        rest = eids[half:count]
        wall = burst(
            [("haul.prepare_inputs", "haul.inputs", {
                "execution_id": eid, "project_id": "bench",
                "inputs": [{"name": "x", "urls": [www.url("/input.bin")]}]}) for eid in rest]
            + [("haul.store_outputs", "haul.outputs", {"execution_id": eid, "project_id": "bench"})
               for eid in rest]
        )  # fmt: skip
        _, floor_lat = _closed_loop(half, floor)
        floor_wall = burst([("bench.noop", "haul.inputs", None)] * (2 * len(rest)))
        worker.stop()  # the pool processes write their stage timers as they exit
        seconds = {
            k.decode(): float(v) for k, v in client_redis.hgetall("bench:cost:seconds").items()
        }
    return {
        "broker": broker, "size": size, "count": count,
        "rate": (count - half) / wall, "p50": _pct(lat, 0.5), "p95": _pct(lat, 0.95),
        "floor_rate": (count - half) / floor_wall, "floor_p50": _pct(floor_lat, 0.5),
        "floor_p95": _pct(floor_lat, 0.95), "stages": seconds,
    }  # fmt: skip


def report(rows: list[dict[str, Any]]) -> str:
    lines = [
        "Executions through a real broker, worker concurrency 2. Rate: half the executions "
        "sent at once (prepare and store tasks), all results awaited. Latency: the other "
        f"half one after another on {IN_FLIGHT} client threads. Floor: 2 no-op tasks per "
        "execution on the same worker, measured the same two ways.\n",
        "| broker | cached input | executions | executions/s | p50 | p95 | floor /s | "
        "floor p50 | cost / floor |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['broker']} | {r['size']} | {r['count']} | {r['rate']:.0f} | "
            f"{r['p50'] * 1000:.1f} ms | {r['p95'] * 1000:.1f} ms | {r['floor_rate']:.0f} | "
            f"{r['floor_p50'] * 1000:.1f} ms | {r['floor_rate'] / r['rate']:.2f}x |"
        )
    lines += [
        "",
        "Where the worker's time went, ms per execution (summed over pool processes):",
        "",
    ]
    stages = sorted({s for r in rows for s in r["stages"]})
    lines.append("| broker | input | " + " | ".join(stages) + " | broker + Celery (p50 - body) |")
    lines.append("|---|---|" + "---|" * (len(stages) + 1))
    for r in rows:
        per = {s: r["stages"].get(s, 0.0) * 1000 / r["count"] for s in stages}
        body = per.get("task body", 0.0)
        cells = " | ".join(f"{per[s]:.2f}" for s in stages)
        lines.append(f"| {r['broker']} | {r['size']} | {cells} | {r['p50'] * 1000 - body:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cost", description=__doc__)
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--brokers", default="redis,rabbitmq")
    parser.add_argument("--sizes", default="10k,10M")
    args = parser.parse_args(argv)
    rows = []
    with (
        tempfile.TemporaryDirectory(prefix="haul-cost-") as tmp,
        servers.redis_server(Path(tmp) / "redis") as redis,
    ):
        for broker in args.brokers.split(","):
            if broker == "rabbitmq" and (why := rabbitmq.missing_reason()):
                print(f"rabbitmq skipped: {why}", file=sys.stderr)
                continue
            for size in args.sizes.split(","):
                rows.append(run_one(broker, size, args.count, Path(tmp), redis))
                print(f"done: {broker} {size}", file=sys.stderr)
    print(report(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
