"""The cost of one execution at the worker, against Celery's own floor (issue 9).

``python -m bench.cost [--count N] [--brokers redis,rabbitmq] [--sizes 10k,10M]``

One real worker (``celery -A bench.costapp worker``: haul's app plus a no-op task and stage
timers), 2 pool processes, on a real broker. An execution is ``haul.prepare_inputs`` of one
input that is already in the worker's cache (its validation is a HEAD to the local HTTP
server), then ``haul.store_outputs`` of one new 1 MB file into the local store. Two client
threads keep two executions in flight (one per pool process), each waiting for a task's result
before sending the next. The floor is the same number of ``bench.noop`` tasks (two per
execution) sent the same way to the same worker, and the data work alone (``bench.datawork``:
the same file work by haul's own functions, without any orchestration) sent as a burst: the
bound no orchestration can pass. Printed: executions/s, p50/p95 latency of one
execution, the ratio to the floor, the CPU seconds the worker's processes and the Redis server
spent per execution during the burst (and the floor's, per two no-op tasks: a ratio that holds
on a loaded machine, where wall-clock rates do not), and where the worker's time went (stage
timers summed over the pool processes). A measurement, not a test.

``--trips N`` instead runs N executions on a worker that counts its Redis round trips by the
haul function that made them (``bench/costapp.py``), after one execution on another worker
filled the cache, and prints them per execution: the map of what to pipeline.
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


_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_s(pids: list[int] | None = None, group: int | None = None) -> float:
    """user+sys CPU seconds of the live processes ``pids``, or of every process in ``group``."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        if (pids is not None and int(entry) in pids) or (
            group is not None and int(fields[2]) == group
        ):
            total += int(fields[11]) + int(fields[12])
    return total / _TICK


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _prepare_files(root: Path, broker: str, size: str, count: int) -> tuple[Path, Path, list[str]]:
    data = root / f"data-{broker}-{size}"
    www_root = root / f"www-{size}"
    www_root.mkdir(parents=True, exist_ok=True)
    if not (www_root / "input.bin").exists():
        (www_root / "input.bin").write_bytes(os.urandom(SIZES[size]))
    return data, www_root, _new_executions(data, count + 1)


def _new_executions(data: Path, count: int) -> list[str]:
    eids = [f"exec-{uuid.uuid4().hex[:12]}" for _ in range(count)]
    for eid in eids:  # one new 1 MB output per execution: nothing is deduplicated
        out = data / "executions" / eid / "outputs"
        out.mkdir(parents=True)
        (out / "model.bin").write_bytes(os.urandom(MB))
    return eids


class _Client:
    """Sends executions (or no-op tasks) to the worker and waits for their results."""

    def __init__(self, broker_url: str, redis_url: str, input_url: str) -> None:
        self.app = _client(broker_url, redis_url)
        self.input_url = input_url

    def prepare(self, eid: str) -> tuple[str, str, Any]:
        message = {"execution_id": eid, "project_id": "bench",
                   "inputs": [{"name": "x", "urls": [self.input_url]}]}  # fmt: skip
        return ("haul.prepare_inputs", "haul.inputs", message)

    @staticmethod
    def store(eid: str) -> tuple[str, str, Any]:
        return ("haul.store_outputs", "haul.outputs", {"execution_id": eid, "project_id": "bench"})

    @staticmethod
    def _args(message: Any) -> list[Any]:
        """A message is the task's one argument; a list is its arguments (bench tasks)."""
        if message is None:
            return []
        return list(message) if isinstance(message, list) else [message]

    def task(self, name: str, queue: str, message: Any) -> None:
        args = self._args(message)
        value = self.app.send_task(name, args=args, queue=queue).get(timeout=120)
        if isinstance(value, dict) and value.get("status") not in (None, "ok", "ready", "stored"):
            raise RuntimeError(f"{name}: {value}")

    def execution(self, eid: str) -> None:
        self.task(*self.prepare(eid))
        self.task(*self.store(eid))

    def burst(self, messages: list[tuple[str, str, Any]]) -> float:
        """Everything sent at once, then every result awaited: the worker's throughput."""
        start = time.perf_counter()
        results = [self.app.send_task(n, args=self._args(m), queue=q) for n, q, m in messages]
        for r in results:
            r.get(timeout=600)
        return time.perf_counter() - start


def run_one(
    broker: str, size: str, count: int, root: Path, redis: Any, profile: str | None = None
) -> dict[str, Any]:
    url = redis.url_for_db(13)
    client_redis = redis_lib.Redis.from_url(url)
    client_redis.flushdb()
    data, www_root, eids = _prepare_files(root, broker, size, count)
    env = {"HAUL_ALLOW_PRIVATE_ADDRESSES": "true"}
    if profile:
        env["BENCH_COST_PROFILE"] = profile
    with ExitStack() as stack:
        www = stack.enter_context(serve(www_root))
        broker_url = stack.enter_context(rabbitmq.rabbitmq_vhost()) if broker == "rabbitmq" else url
        worker = stack.enter_context(
            start_worker(url, data, env, concurrency=2, broker_url=broker_url, app="bench.costapp")
        )
        client = _Client(broker_url, url, www.url("/input.bin"))
        client.execution(eids[count])  # the first reading fills the cache; not measured
        client_redis.delete("bench:cost:seconds", "bench:cost:calls")
        half = count // 2
        wall, lat = _closed_loop(half, lambda i: client.execution(eids[i]))
        rest = eids[half:count]
        cpu = (_cpu_s(group=worker.pid), _cpu_s(pids=[redis.pid]))
        wall = client.burst(
            [client.prepare(eid) for eid in rest] + [client.store(eid) for eid in rest]
        )
        cpu_exec = (_cpu_s(group=worker.pid) - cpu[0], _cpu_s(pids=[redis.pid]) - cpu[1])

        def floor(_i: int) -> None:
            client.task("bench.noop", "haul.inputs", None)
            client.task("bench.noop", "haul.outputs", None)

        _, floor_lat = _closed_loop(half, floor)
        cpu = (_cpu_s(group=worker.pid), _cpu_s(pids=[redis.pid]))
        floor_wall = client.burst([("bench.noop", "haul.inputs", None)] * (2 * len(rest)))
        cpu_floor = (_cpu_s(group=worker.pid) - cpu[0], _cpu_s(pids=[redis.pid]) - cpu[1])
        # The data work alone, on the same worker: what no orchestration can take away.
        bare = _new_executions(data, len(rest))
        cached = str(www_root / "input.bin")
        cpu = (_cpu_s(group=worker.pid), _cpu_s(pids=[redis.pid]))
        data_wall = client.burst(
            [("bench.datawork", "haul.inputs", [e, "in", cached]) for e in bare]
            + [("bench.datawork", "haul.outputs", [e, "out"]) for e in bare]
        )
        cpu_data = (_cpu_s(group=worker.pid) - cpu[0], _cpu_s(pids=[redis.pid]) - cpu[1])
        worker.stop()  # the pool processes write their stage timers as they exit
        seconds = {
            k.decode(): float(v) for k, v in client_redis.hgetall("bench:cost:seconds").items()
        }
    n = len(rest)
    return {
        "broker": broker, "size": size, "count": count,
        "rate": n / wall, "p50": _pct(lat, 0.5), "p95": _pct(lat, 0.95),
        "floor_rate": n / floor_wall, "floor_p50": _pct(floor_lat, 0.5),
        "floor_p95": _pct(floor_lat, 0.95), "stages": seconds,
        "cpu_worker": cpu_exec[0] / n, "cpu_redis": cpu_exec[1] / n,
        "floor_cpu_worker": cpu_floor[0] / n, "floor_cpu_redis": cpu_floor[1] / n,
        "data_rate": n / data_wall,
        "data_cpu_worker": cpu_data[0] / n, "data_cpu_redis": cpu_data[1] / n,
        "load": open("/proc/loadavg").read().split()[0],
    }  # fmt: skip


def count_trips(broker: str, size: str, count: int, root: Path, redis: Any) -> dict[str, float]:
    """Redis round trips per execution, by the haul function that made them."""
    url = redis.url_for_db(12)
    client_redis = redis_lib.Redis.from_url(url)
    client_redis.flushdb()
    data, www_root, eids = _prepare_files(root, f"trips-{broker}", size, count)
    env = {"HAUL_ALLOW_PRIVATE_ADDRESSES": "true"}
    with ExitStack() as stack:
        www = stack.enter_context(serve(www_root))
        broker_url = stack.enter_context(rabbitmq.rabbitmq_vhost()) if broker == "rabbitmq" else url
        with start_worker(url, data, env, broker_url=broker_url, app="bench.costapp") as warm:
            _Client(broker_url, url, www.url("/input.bin")).execution(eids[count])
            warm.stop()
        client_redis.delete("bench:cost:trips")
        counting = {**env, "BENCH_COST_TRIPS": "1"}
        with start_worker(
            url, data, counting, concurrency=2, broker_url=broker_url, app="bench.costapp"
        ) as worker:
            client = _Client(broker_url, url, www.url("/input.bin"))
            _closed_loop(count, lambda i: client.execution(eids[i]))
            worker.stop()
        trips = client_redis.hgetall("bench:cost:trips")
    return {k.decode(): int(v) / count for k, v in trips.items()}


def report_trips(broker: str, size: str, count: int, trips: dict[str, float]) -> str:
    lines = [
        f"Redis round trips per execution ({broker}, {size} cached input, {count} executions, "
        "pool processes only; a pipeline is one):",
        "",
        "| where | commands | per execution |",
        "|---|---|---|",
    ]
    for key in sorted(trips, key=lambda k: (k.startswith("celery"), k)):
        where, commands = key.split(" ", 1)
        lines.append(f"| {where} | {commands} | {trips[key]:.2f} |")
    haul = sum(v for k, v in trips.items() if not k.startswith(("celery", "?")))
    lines.append(f"| **haul, all** | | **{haul:.2f}** |")
    lines.append(f"| **all** | | **{sum(trips.values()):.2f}** |")
    return "\n".join(lines)


def _cpu_ms(r: dict[str, Any], run: str) -> float:
    """CPU ms per execution of one run ("" haul's, "floor_", "data_"): worker and Redis."""
    return (r[f"{run}cpu_worker"] + r[f"{run}cpu_redis"]) * 1000


def _cpu_cell(r: dict[str, Any], run: str) -> str:
    return f"{r[f'{run}cpu_worker'] * 1000:.1f} + {r[f'{run}cpu_redis'] * 1000:.1f}"


def report(rows: list[dict[str, Any]]) -> str:
    lines = [
        "Executions through a real broker, worker concurrency 2. Rate: half the executions "
        "sent at once (prepare and store tasks), all results awaited. Latency: the other "
        f"half one after another on {IN_FLIGHT} client threads. Floor: 2 no-op tasks per "
        "execution on the same worker, measured the same two ways.\n",
        "| broker | cached input | executions | executions/s | p50 | p95 | floor /s | "
        "floor p50 | cost / floor | CPU ms: worker + Redis | floor CPU ms | CPU / floor | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['broker']} | {r['size']} | {r['count']} | {r['rate']:.0f} | "
            f"{r['p50'] * 1000:.1f} ms | {r['p95'] * 1000:.1f} ms | {r['floor_rate']:.0f} | "
            f"{r['floor_p50'] * 1000:.1f} ms | {r['floor_rate'] / r['rate']:.2f}x | "
            f"{_cpu_cell(r, '')} | {_cpu_cell(r, 'floor_')} | "
            f"{_cpu_ms(r, '') / _cpu_ms(r, 'floor_'):.2f}x | {r['load']} |"
        )
    lines += [
        "",
        "The data work alone (`bench.datawork`, two tasks per execution on the same worker: "
        "the cached input copied into place; the output hashed three ways while its store "
        "copy is written, then compared, flushed and linked; no message model, lease, record, "
        "event or Redis of haul's). It bounds what any orchestration could reach with this "
        "execution: its rate is the most executions/s, its ratio the least cost / floor.",
        "",
        "| broker | cached input | data work /s | cost / floor | CPU ms: worker + Redis | "
        "CPU / floor | executions/s ÷ data work /s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['broker']} | {r['size']} | {r['data_rate']:.0f} | "
            f"{r['floor_rate'] / r['data_rate']:.2f}x | {_cpu_cell(r, 'data_')} | "
            f"{_cpu_ms(r, 'data_') / _cpu_ms(r, 'floor_'):.2f}x | "
            f"{r['rate'] / r['data_rate']:.2f} |"
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
    parser.add_argument("--trips", type=int, metavar="N", default=0,
                        help="count Redis round trips over N executions instead")  # fmt: skip
    parser.add_argument("--profile", metavar="FOLDER",
                        help="cProfile each pool process into FOLDER (slows it down)")  # fmt: skip
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
                if args.trips:
                    trips = count_trips(broker, size, args.trips, Path(tmp), redis)
                    print(report_trips(broker, size, args.trips, trips) + "\n", flush=True)
                    continue
                rows.append(run_one(broker, size, args.count, Path(tmp), redis, args.profile))
                print(f"done: {broker} {size}", file=sys.stderr)
    if rows:
        print(report(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
