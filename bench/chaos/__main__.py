"""``python -m bench.chaos --executions N --kills K --seed S``: haul under worker kills.

N executions (large and small inputs from nginx, large and small outputs to a local store) run
through one real worker (prefork, 2 children) on a Redis this script starts on a free port with
AOF on. Meanwhile K SIGKILLs land at random moments (seeded), on a pool child or on the main
process (the script then starts a new worker), and Redis is restarted twice (SHUTDOWN with its
AOF, same port). The orchestrator sends each message once, and again only when
:mod:`worker.delivery` finds it nowhere (a main process killed in kombu's BRPOP window;
``--no-resend`` turns that off); everything else that brings an execution to its outcome is
haul's job. At the end it prints the figures of :mod:`bench.chaos.audit` and exits
0 only when lost executions, partial files, duplicate datums, conflicting records and
conflicting events are all zero. Bounded by ``--max-seconds``; it stops by itself.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench import nginx
from bench.chaos.audit import Figures, audit
from bench.chaos.cluster import Worker
from bench.chaos.load import Corpus, Execution, MiB, Orchestrator
from bench.chaos.trace import Monitor, trace_lost
from bench.chaos.watch import Watcher
from tests.support.rabbitmq import new_vhost_name, rabbitmq_vhost
from tests.support.servers import RedisServer, redis_server


@dataclass
class Chaos:
    kills_child: int = 0
    kills_main: int = 0
    kills_missed: int = 0  # a child kill with no child alive at that moment
    #: kills that landed while at least one execution was between message and outcome
    kills_busy: int = 0
    redis_restarts: int = 0
    #: the worker's main process exited by itself (restarted, as a supervisor would)
    crashes: list[str] = field(default_factory=list)
    steps_done: int = 0
    #: task ids the orchestrator sent again because worker.delivery found them nowhere
    resent: list[str] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    #: (time.monotonic(), what) of every kill and restart, for the trace of a lost execution
    timeline: list[tuple[float, str]] = field(default_factory=list)
    #: set while the killer, past its gap, waits for work in flight: only then may an
    #: execution be sent early (else a fast machine finished every execution during a gap)
    killer_ready: threading.Event = field(default_factory=threading.Event)


def plan(kills: int, restarts: int = 2) -> list[str]:
    """K kills with R Redis restarts spread evenly among them (two: at about a third and two
    thirds of the way)."""
    steps = ["kill"] * kills
    for n in range(restarts, 0, -1):
        steps.insert((n * kills) // (restarts + 1), "redis")
    return steps


def _killer(
    worker: Worker,
    redis_srv: RedisServer,
    orch: Orchestrator,
    steps: list[str],
    rnd: random.Random,
    gap_s: tuple[float, float],
    main_share: float,
    stop: threading.Event,
    chaos: Chaos,
) -> None:
    started = time.monotonic()
    total = len(orch.executions)
    for n, step in enumerate(steps, start=1):
        # Kills and progress stay in step both ways: step n waits for (n-1)/L of the outcomes
        # and for an execution in flight; execution i is sent once i*L/N steps are made, or
        # when nothing is in flight (may_send), so the killer never waits for work forever.
        if stop.wait(rnd.uniform(*gap_s)):
            return
        chaos.killer_ready.set()
        # Once every execution has its outcome the remaining steps are made at once (counted
        # in kills made, not in kills_busy): the plan is always carried out whole.
        while not orch.finished() and (
            orch.outcomes() < (n - 1) * total // len(steps) or orch.active() == 0
        ):
            if stop.wait(0.01):
                return
        chaos.killer_ready.clear()
        now = time.monotonic()
        at = f"{now - started:7.1f}s"
        busy = orch.active() > 0
        if step == "redis":
            chaos.timeline.append((now, "redis restart"))
            redis_srv.restart()
            chaos.redis_restarts += 1
            chaos.steps_done += 1
            chaos.log.append(f"{at} redis restarted")
            continue
        if rnd.random() < main_share:
            chaos.timeline.append((now, "SIGKILL main"))
            victim = worker.kill_main_and_restart()
            chaos.kills_main += 1
            chaos.log.append(f"{at} SIGKILL main {victim}; new worker {worker.pid}")
        else:
            child = worker.kill_child(rnd.randrange(1 << 30))
            if child is None:
                chaos.kills_missed += 1
                chaos.steps_done += 1
                continue
            chaos.timeline.append((now, "SIGKILL child"))
            chaos.kills_child += 1
            chaos.log.append(f"{at} SIGKILL pool child {child}")
        chaos.kills_busy += busy
        chaos.steps_done += 1


def _supervisor(worker: Worker, stop: threading.Event, chaos: Chaos) -> None:
    started = time.monotonic()
    while not stop.wait(0.5):
        if worker.revive():
            chaos.log.append(f"{time.monotonic() - started:7.1f}s worker had exited; restarted")


def _report(fig: Figures, chaos: Chaos, args: argparse.Namespace, seconds: float) -> str:
    def many(items: list[str] | dict[str, str]) -> str:
        values = list(items.items()) if isinstance(items, dict) else items
        shown = "; ".join(str(v) for v in values[:5])
        return f"{len(values)}" + (
            f"  ({shown}{' ...' if len(values) > 5 else ''})" if values else ""
        )

    lines = [
        f"chaos run: executions={args.executions} kills={args.kills} seed={args.seed} "
        f"big={args.big_mib} MiB broker={args.broker}"
        f"{' (no resend)' if args.no_resend else ''}, {seconds:.0f} s",
        f"  kills made                 {chaos.kills_child + chaos.kills_main} "
        f"({chaos.kills_child} pool children, {chaos.kills_main} main processes; "
        f"{chaos.kills_busy} while executions were in flight)",
        f"  redis restarts             {chaos.redis_restarts}",
        f"  worker exits by itself     {many(chaos.crashes)}",
        f"  messages found nowhere, resent {many(chaos.resent)}",
        f"  executions done            {fig.done}/{fig.executions}",
        f"  failed with a code         {many(fig.failed)}",
        f"  lost executions            {many(fig.lost)}",
        f"  partial files seen         {many(fig.partial_seen)}",
        f"  duplicate datums           {many(fig.duplicate_datums)}",
        f"  conflicting records        {many(fig.conflicting_records)}",
        f"  events, id repeated w/ other data {many(fig.conflicting_events)}",
        f"  events                     {fig.events} ({fig.events_repeated} ids published again)",
        *(f"  trace: {line}" for line in fig.trace),
    ]
    return "\n".join(lines)


@contextlib.contextmanager
def _broker(kind: str, redis_srv: RedisServer) -> Iterator[str]:
    """The broker's URL: the run's own Redis, or a fresh vhost on the machine's RabbitMQ."""
    if kind == "redis":
        yield redis_srv.url
        return
    with rabbitmq_vhost(new_vhost_name("haul-chaos")) as url:
        yield url


def run(args: argparse.Namespace) -> tuple[Figures, Chaos, float]:
    rnd = random.Random(args.seed)
    base = Path(tempfile.mkdtemp(prefix="haul-chaos-", dir=args.work_dir))
    data_dir, store_root, www = base / "data", base / "store", base / "www"
    store_root.mkdir(parents=True)
    corpus = Corpus(www, args.big_mib * MiB, args.seed)
    corpus.write_inputs()
    outputs: dict[str, bytes] = {}
    chaos = Chaos()
    started = time.monotonic()
    deadline = started + args.max_seconds
    stop = threading.Event()

    def on_outputs(ex: Execution) -> None:
        outputs.update({sha: data for sha, (_name, data) in ex.outputs.items()})

    def expected(path: Path) -> bytes | None:
        if path.is_relative_to(store_root):
            return outputs.get(path.parent.name)
        return corpus.inputs.get(path.name) if path.parent.parent.name == "inputs" else None

    env = {
        "HAUL_ALLOW_PRIVATE_ADDRESSES": "true",
        "HAUL_STORES__DEFAULT__TYPE": "local",
        "HAUL_STORES__DEFAULT__PATH": str(store_root),
        "HAUL_CACHE_ENABLED": "false",
        "HAUL_CHUNK_SIZE_BYTES": str(1 * MiB),
        "HAUL_MULTIPART_THRESHOLD_BYTES": str(2 * MiB),
        "HAUL_LEASE_TTL_S": "3",
        "HAUL_LEASE_RETRY_S": "1",
        "HAUL_BROKER_VISIBILITY_TIMEOUT_S": "10",
        "HAUL_SHUTDOWN_GRACE_S": "0",
        "HAUL_METRICS_BIND": "",
        "HAUL_MAX_ATTEMPTS": "3",
    }
    try:
        with (
            redis_server(base / "redis", appendonly=True) as redis_srv,
            nginx.serve(www, "chaos") as web,
            _broker(args.broker, redis_srv) as broker_url,
        ):
            worker = Worker(redis_srv.url, data_dir, env, base / "worker.log", broker_url)
            watcher = Watcher([data_dir / "executions", store_root], expected, seed=args.seed)
            monitor = Monitor(redis_srv.url) if args.trace else None
            orch = Orchestrator(
                redis_srv.url, data_dir, web.base_url, corpus, args.executions, 4, on_outputs,
                broker_url=broker_url, resend=not args.no_resend,
            )  # fmt: skip
            steps = plan(args.kills, args.redis_restarts)

            def may_send(i: int) -> bool:
                due = -(-i * len(steps) // args.executions)  # ceil(i * L / N)
                idle = orch.active() == 0 and chaos.killer_ready.is_set()
                return chaos.steps_done >= due or idle or not killer.is_alive()

            orch.may_send = may_send
            if monitor is not None:
                monitor.start()
            worker.start()
            watcher.start()
            killer = threading.Thread(
                target=_killer,
                args=(worker, redis_srv, orch, steps, rnd,
                      (args.min_gap_s, args.max_gap_s), args.main_share, stop, chaos),
                daemon=True,
            )  # fmt: skip
            killer.start()
            supervisor = threading.Thread(
                target=_supervisor, args=(worker, stop, chaos), daemon=True
            )
            supervisor.start()
            try:
                # every execution to its outcome, and every planned kill and restart made
                orch.run(deadline, stop)
                while killer.is_alive() and time.monotonic() < deadline:
                    killer.join(0.5)
            finally:
                stop.set()
                killer.join(120)
                supervisor.join(120)
                watcher.stop()
                worker.stop()
                if monitor is not None:
                    monitor.stop()
            seconds = time.monotonic() - started
            chaos.crashes = list(worker.crashes)
            chaos.resent = list(orch.check.resent) if orch.check is not None else []
            fig = audit(redis_srv.url, data_dir, store_root, corpus, orch.executions,
                        watcher.partial)  # fmt: skip
            lost = [
                e for e in orch.executions.values() if e.phase in ("new", "preparing", "storing")
            ]
            fig.trace = trace_lost(redis_srv.url, base / "worker.log", lost, chaos.timeline,
                                   monitor, time.time() - time.monotonic())  # fmt: skip
            if args.verbose:
                print("\n".join(chaos.log), file=sys.stderr)
                print(f"watcher: {watcher.samples} sweeps, {watcher.files_checked} file checks",
                      file=sys.stderr)  # fmt: skip
    finally:
        if args.keep:
            print(f"kept {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)
    return fig, chaos, seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n")[0])
    p.add_argument("--executions", type=int, default=20)
    p.add_argument("--kills", type=int, default=10)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--big-mib", type=int, default=8, help="size of the large input and output")
    p.add_argument("--min-gap-s", type=float, default=0.1, help="shortest pause between kills")
    p.add_argument("--max-gap-s", type=float, default=1.0, help="longest pause between kills")
    p.add_argument("--max-seconds", type=float, default=900.0, help="stop by itself after this")
    p.add_argument("--redis-restarts", type=int, default=2, help="Redis restarts among the kills")
    p.add_argument(
        "--main-share",
        type=float,
        default=0.3,
        help="share of the kills that hit the main process (the rest: a pool child)",
    )
    p.add_argument(
        "--trace",
        action="store_true",
        help="follow Redis MONITOR to trace a lost execution's message",
    )
    p.add_argument(
        "--broker",
        choices=("redis", "amqp"),
        default="redis",
        help="amqp: the machine's RabbitMQ (a vhost of the run's own); Redis "
        "still holds events, leases and results, and is still restarted",
    )
    p.add_argument(
        "--no-resend",
        action="store_true",
        help="the orchestrator never sends a message again (worker.delivery off)",
    )
    p.add_argument("--work-dir", default=None, help="where the scratch folder goes")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder")
    p.add_argument("-v", "--verbose", action="store_true", help="print every kill")
    args = p.parse_args(argv)
    fig, chaos, seconds = run(args)
    print(_report(fig, chaos, args, seconds))
    return 0 if fig.zero() and chaos.redis_restarts == args.redis_restarts else 1


if __name__ == "__main__":
    sys.exit(main())
