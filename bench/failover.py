"""How long until another worker has the message when a worker dies with kill -9, per broker.

``python -m bench.failover [--runs N] [--visibility-s S]``: two real workers (concurrency 1)
on one broker; a slow download goes to one of them; its whole process group is killed with
SIGKILL mid-task; the time until the other worker's log says it received the same task id is
the failover time. Redis returns an unacknowledged message after ``broker_visibility_timeout_s``
(lowered here with ``--visibility-s``, default 300 s in production); RabbitMQ returns it as soon
as the dead consumer's connection closes. A measurement, not a test: it prints a table.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

from tests.integration.conftest import Haul
from tests.support import rabbitmq, servers
from tests.support.httpserver import serve
from tests.support.worker import WorkerProcess, start_worker

MiB = 1024 * 1024


def _received(worker: WorkerProcess, task_id: str) -> bool:
    return re.search(rf"\[{re.escape(task_id)}\] received", worker.log_text()) is not None


def _poll(cond: object, timeout_s: float, what: str) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if cond():  # type: ignore[operator]
            return time.monotonic()
        time.sleep(0.01)
    raise TimeoutError(what)


def one_run(broker: str, redis: servers.RedisServer, root: Path, visibility_s: int) -> float:
    www_root = root / "www"
    www_root.mkdir(parents=True, exist_ok=True)
    (www_root / "slow.bin").write_bytes(os.urandom(8 * MiB))
    url = redis.url_for_db(14)
    import redis as redis_lib

    redis_lib.Redis.from_url(url).flushdb()
    env = {
        "HAUL_ALLOW_PRIVATE_ADDRESSES": "true",
        "HAUL_BROKER_VISIBILITY_TIMEOUT_S": str(visibility_s),
    }
    with ExitStack() as stack:
        www = stack.enter_context(serve(www_root))
        www.faults.throttle("/slow.bin", 256 * 1024)
        broker_url = stack.enter_context(rabbitmq.rabbitmq_vhost()) if broker == "rabbitmq" else url
        data = root / f"data-{uuid.uuid4().hex[:6]}"
        a = stack.enter_context(start_worker(url, data, env, broker_url=broker_url))
        b = stack.enter_context(start_worker(url, data, env, broker_url=broker_url))
        haul = Haul(url, data, a, broker_url)
        message = {
            "execution_id": f"exec-{uuid.uuid4().hex[:10]}",
            "project_id": "bench",
            "inputs": [{"name": "x", "urls": [www.url("/slow.bin")]}],
        }
        task_id = haul.send("haul.prepare_inputs", message).id
        _poll(lambda: _received(a, task_id) or _received(b, task_id), 30, "nobody received it")
        victim, other = (a, b) if _received(a, task_id) else (b, a)
        _poll(lambda: www.bytes_sent > MiB, 30, "the download never started")
        os.killpg(victim.proc.pid, signal.SIGKILL)
        killed = time.monotonic()
        got = _poll(lambda: _received(other, task_id), visibility_s * 3 + 60, "never redelivered")
        return got - killed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.failover", description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--visibility-s", type=int, default=30)
    parser.add_argument("--brokers", default="redis,rabbitmq")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="haul-failover-") as tmp:
        root = Path(tmp)
        with servers.redis_server(root / "redis") as redis:
            for broker in args.brokers.split(","):
                if broker == "rabbitmq" and (why := rabbitmq.missing_reason()):
                    print(f"rabbitmq skipped: {why}", file=sys.stderr)
                    continue
                times = [one_run(broker, redis, root / f"{broker}-{i}", args.visibility_s)
                         for i in range(args.runs)]  # fmt: skip
                rows.append((broker, times))
    print(f"kill -9 of a worker mid-task, {args.runs} runs; Redis visibility timeout "
          f"{args.visibility_s} s\n")  # fmt: skip
    print("| broker | until another worker has the message: median | min | max |")
    print("|---|---|---|---|")
    for broker, times in rows:
        print(f"| {broker} | {statistics.median(times):.2f} s | {min(times):.2f} s | "
              f"{max(times):.2f} s |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
