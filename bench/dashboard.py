"""The dashboard's read model under load: ``python -m bench.dashboard``.

Synthetic events for N executions (default 100 000, about 15 events each) are generated in the
contract's shape (``worker.events.event_id`` ids, the event models' fields), serialised to JSON
as they sit on the stream, and projected in batches of ``consumer.BATCH`` (2 000) exactly as
the consumer does:
``parse_entry`` (JSON + the worker's pydantic models) and ``Projector.project`` (one
transaction per batch). Redis is left out on purpose: this measures the read model.

Then the app is served by uvicorn in this process and timed over real HTTP with httpx: the
listing's first page, filtered pages, a deep cursor (the middle of the listing), the details
API and the details page. Results: a markdown table on stdout and in bench/results/.

Options: ``--executions N``, ``--db sqlite,postgresql``, ``--requests R`` (per query, default
200), ``--pg-url URL`` (default the local PostgreSQL, database ``haul_web_bench``).
It is a measurement, not a test: nothing fails when a goal is missed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine, text

from dashboard.app import WebContext, create_app
from dashboard.auth import Guard
from dashboard.consumer import BATCH as CONSUMER_BATCH
from dashboard.db import make_engine, migrate
from dashboard.parse import parse_entry
from dashboard.projector import Projector
from dashboard.queries import Queries
from dashboard.views import Health
from worker import constants as c
from worker.events import event_id

BATCH = CONSUMER_BATCH  # what the consumer reads per XREADGROUP and projects per transaction
PROJECTS = 20
INPUTS = 10
OUTPUTS = 2
T0 = datetime(2026, 1, 1, tzinfo=UTC)
RESULTS = Path(__file__).parent / "results"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_BENCH = "postgresql://postgres@127.0.0.1:5432/haul_web_bench"


def _h(seed: str) -> dict[str, str]:
    b = seed.encode()
    return {"md5": hashlib.md5(b).hexdigest(), "sha1": hashlib.sha1(b).hexdigest(),
            "sha256": hashlib.sha256(b).hexdigest()}  # fmt: skip


def _event(kind: str, subject: str, data: dict[str, Any], at: datetime, *ident: str) -> str:
    return json.dumps({
        "specversion": "1.0", "id": event_id(kind, *ident), "source": c.EVENT_SOURCE,
        "type": kind, "time": at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "subject": subject, "datacontenttype": "application/json", "data": data,
    }, separators=(",", ":"))  # fmt: skip


def execution_events(n: int) -> list[str]:
    """About 15 events of execution ``n``: 10 inputs (every 10th with one changed), ready,
    2 outputs and outputs.stored; every 20th fails its inputs instead."""
    ex, project = f"exec-{n:07d}", f"proj-{n % PROJECTS:02d}"
    at = T0 + timedelta(seconds=n)
    out = []
    version = n // PROJECTS  # every execution of a project reads the same URLs
    for i in range(INPUTS):
        url = f"https://data.example/{project}/part-{i:02d}.bin"
        content = f"{url}:{version if i == 0 else 0}"
        out.append(_event(c.EV_INPUT_DOWNLOADED, ex, {
            "execution_id": ex, "project_id": project, "input": "data", "url": url,
            "path": f"/valohai/inputs/data/part-{i:02d}.bin", "size": 1000 + i, "cached": False,
            "seconds": 0.01, "source": {"etag": '"e"'}, **_h(content)}, at, ex, url))  # fmt: skip
    if n % 10 == 0 and n >= PROJECTS:
        url = f"https://data.example/{project}/part-00.bin"
        seen = {"size": 1000, "seen_at": "2026-01-01T00:00:00Z"}
        out.append(_event(c.EV_INPUT_CHANGED, ex, {
            "execution_id": ex, "project_id": project, "input": "data", "url": url,
            "message": f"content of {url} changed",
            "previous": {**_h(f"{url}:{version - 1}"), **seen,
                         "execution_id": f"exec-{n - PROJECTS:07d}"},
            "current": {**_h(f"{url}:{version}"), **seen, "execution_id": ex},
        }, at, ex, url))  # fmt: skip
    if n % 20 == 7:
        out.append(_event(c.EV_INPUTS_FAILED, ex, {
            "execution_id": ex, "project_id": project, "input": "data", "url": "https://x/y",
            "error": {"code": "not_found", "message": "404"}}, at, ex))  # fmt: skip
        return out
    out.append(_event(c.EV_INPUTS_READY, ex, {"execution_id": ex, "project_id": project,
                      "files": INPUTS, "bytes": 10045, "seconds": 0.2}, at, ex))  # fmt: skip
    for o in range(OUTPUTS):
        datum = hashlib.md5(f"{ex}:{o}".encode()).hexdigest()
        out.append(_event(c.EV_OUTPUT_STORED, ex, {
            "execution_id": ex, "project_id": project, "datum_id": datum, "path": f"out-{o}.bin",
            "uri": f"datum://{datum}", "key": f"data/{project}/{datum}", "size": 500,
            "deduplicated": False, "tags": [], "alias": None, "dataset_versions": [],
            **_h(datum)}, at, ex, datum))  # fmt: skip
    out.append(_event(c.EV_OUTPUTS_STORED, ex, {"execution_id": ex, "project_id": project,
                      "files": OUTPUTS, "bytes": 1000, "seconds": 0.1}, at, ex))  # fmt: skip
    return out


def batches(executions: int) -> Iterator[list[tuple[str, dict[str, str]]]]:
    pending: list[tuple[str, dict[str, str]]] = []
    seq = 0
    for n in range(executions):
        for raw in execution_events(n):
            seq += 1
            pending.append((f"{1_700_000_000_000 + seq // 10}-{seq % 10}", {"event": raw}))
            if len(pending) == BATCH:
                yield pending
                pending = []
    if pending:
        yield pending


def _server_cpu_s(engine: Engine) -> float | None:
    """CPU seconds so far of the PostgreSQL backends serving this database, read from /proc
    (a server on this machine; its background writers are not counted). None on SQLite."""
    if engine.dialect.name != "postgresql":
        return None
    with engine.connect() as conn:
        pids = conn.execute(
            text("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
        ).scalars()
        pids = list(pids)
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None  # not this machine's server, or not readable
        total += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return total


def project_all(url: str, executions: int) -> dict[str, Any]:
    engine = make_engine(url)
    migrate(engine)
    projector = Projector(engine)
    load_before = os.getloadavg()[0]
    server_before = _server_cpu_s(engine)
    events = 0
    busy = 0.0
    cpu = 0.0
    started = time.perf_counter()
    for batch in batches(executions):
        t, t_cpu = time.perf_counter(), time.process_time()
        projector.project([parse_entry(i, f) for i, f in batch])
        busy += time.perf_counter() - t
        cpu += time.process_time() - t_cpu
        events += len(batch)
    wall = time.perf_counter() - started
    server_after = _server_cpu_s(engine)
    server_cpu = (
        server_after - server_before
        if server_before is not None and server_after is not None
        else None
    )
    engine.dispose()
    # CPU seconds of this process too: on a shared machine the wall clock also measures the
    # neighbours (PostgreSQL's own CPU is not in it).
    # The 1-minute load average around the run: what the wall clock shared the cores with.
    return {"events": events, "project_s": busy, "wall_s": wall, "events_per_s": events / busy,
            "events_per_cpu_s": events / cpu, "cpu_s": cpu,
            "load_before": load_before, "load_after": os.getloadavg()[0],
            "server_cpu_s": server_cpu}  # fmt: skip


def _serve(url: str) -> tuple[uvicorn.Server, str, threading.Thread]:
    engine = make_engine(url)
    queries = Queries(engine)
    ok = Health(status="ok", lag_events=0, last_event_time=None, redis=True)
    app = create_app(WebContext(queries, Guard(None), lambda: ok, CollectorRegistry()))
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False))  # fmt: skip
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(base + "/api/health", timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.05)
    return server, base, thread


def latencies(url: str, executions: int, requests: int) -> dict[str, dict[str, float]]:
    server, base, thread = _serve(url)
    out: dict[str, dict[str, float]] = {}
    with httpx.Client(base_url=base, timeout=30) as http:
        # A cursor in the middle of the listing: walk there once with big pages.
        cursor = None
        for _ in range(max(1, executions // 2 // 200)):
            cursor = http.get("/api/executions", params={"limit": 200, "cursor": cursor}
                              if cursor else {"limit": 200}).json()["next"]  # fmt: skip
        middle = f"exec-{executions // 2:07d}"
        cases: dict[str, tuple[str, dict[str, Any]]] = {
            "listing, first page (50)": ("/api/executions", {}),
            "listing, project filter": ("/api/executions", {"project": "proj-03"}),
            "listing, project+status filter": (
                "/api/executions", {"project": "proj-07", "status": "inputs_failed"}),
            "listing, warnings only": ("/api/executions", {"warnings": "true"}),
            "listing, project+warnings": (
                "/api/executions", {"project": "proj-05", "warnings": "true"}),
            "listing, deep cursor (middle)": ("/api/executions", {"cursor": cursor}),
            "listing page (HTML)": ("/executions", {}),
            "details API": (f"/api/executions/{middle}", {}),
            "details page (HTML)": (f"/executions/{middle}", {}),
        }  # fmt: skip
        for name, (path, params) in cases.items():
            http.get(path, params=params).raise_for_status()  # warm
            times = []
            for _ in range(requests):
                t = time.perf_counter()
                r = http.get(path, params=params)
                times.append((time.perf_counter() - t) * 1000)
                r.raise_for_status()
            times.sort()
            out[name] = {"p50_ms": statistics.median(times),
                         "p95_ms": times[int(len(times) * 0.95) - 1]}  # fmt: skip
    server.should_exit = True
    thread.join(10)
    return out


def _pg_fresh(url: str) -> None:
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.dashboard")
    ap.add_argument("--executions", type=int, default=100_000)
    ap.add_argument("--db", default="sqlite,postgresql")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--pg-url", default=PG_BENCH)
    ap.add_argument("--out", default="dashboard", help="name of the results files")
    args = ap.parse_args(argv)
    results: dict[str, Any] = {"executions": args.executions, "dbs": {}}
    with tempfile.TemporaryDirectory(prefix="haul-web-bench-") as tmp:
        for db in args.db.split(","):
            if db == "sqlite":
                url = f"sqlite:///{Path(tmp) / 'bench.sqlite3'}"
            else:
                url = args.pg_url
                _pg_fresh(url)
            print(f"{db}: projecting {args.executions} executions ...", flush=True)
            proj = project_all(url, args.executions)
            print(f"{db}: {proj['events']} events, {proj['events_per_s']:.0f} events/s", flush=True)
            engine = make_engine(url)
            if db == "postgresql":
                with engine.begin() as conn:
                    conn.execute(text("ANALYZE"))
            engine.dispose()
            results["dbs"][db] = {
                "projector": proj,
                "latency": latencies(url, args.executions, args.requests),
            }
    report = render(results)
    print(report)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.md").write_text(report)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(results, indent=2))
    return 0


def render(results: dict[str, Any]) -> str:
    dbs = results["dbs"]
    lines = [f"# haul web read model: {results['executions']} executions", ""]
    lines += ["| | " + " | ".join(dbs) + " |", "|---|" + "---|" * len(dbs)]
    lines.append("| events projected | " + " | ".join(
        f"{d['projector']['events']:,}" for d in dbs.values()) + " |")  # fmt: skip
    lines.append("| projector events/s (wall clock) | " + " | ".join(
        f"{d['projector']['events_per_s']:,.0f}" for d in dbs.values()) + " |")  # fmt: skip
    lines.append("| projector events per CPU second of the projecting process | " + " | ".join(
        f"{d['projector']['events_per_cpu_s']:,.0f}" for d in dbs.values()) + " |")  # fmt: skip
    lines.append("| projector CPU seconds (user + system, this process) | " + " | ".join(
        f"{d['projector']['cpu_s']:,.1f}" for d in dbs.values()) + " |")  # fmt: skip
    lines.append("| database server CPU seconds (PostgreSQL backends) | " + " | ".join(
        "n/a" if d["projector"].get("server_cpu_s") is None
        else f"{d['projector']['server_cpu_s']:,.1f}" for d in dbs.values()) + " |")  # fmt: skip
    lines.append("| load average (1 min) before / after projecting | " + " | ".join(
        f"{d['projector']['load_before']:.2f} / {d['projector']['load_after']:.2f}"
        for d in dbs.values()) + " |")  # fmt: skip
    names = next(iter(dbs.values()))["latency"]
    for name in names:
        lines.append(f"| {name}: p50 / p95 ms | " + " | ".join(
            f"{d['latency'][name]['p50_ms']:.1f} / {d['latency'][name]['p95_ms']:.1f}"
            for d in dbs.values()) + " |")  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
