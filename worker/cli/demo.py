"""``haul demo``: haul's main job once, end to end, on the embedded defaults.

What it does, in the order a person reads it:

1. Redis: the one at ``settings.redis_url`` if it answers PING, otherwise a ``redis-server`` it
   starts itself on a free loopback port, with an append-only file under ``<data_dir>/redis``
   (the datum index and the change memory live in Redis, so they must survive a restart).
2. A sample dataset served by a local HTTP server (stdlib, in a thread).
3. A real worker subprocess (``python -m celery -A tasks worker``) with its data under
   ``<data_dir>/demo``.
4. Execution 1 prepares its inputs; its ``haul.log`` is shown. One file of the dataset changes;
   execution 2 prepares the same inputs and its ``haul.log`` shows the ``warning:`` line.
5. Execution 2 writes an output with a ``.metadata.json`` sidecar; ``store_outputs`` stores it as
   a datum at its content-addressed key.
6. The events published for both executions, one readable line each.
7. Everything it started is stopped, by PID.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import http.server
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from worker.constants import (
    CONFIG_DIR,
    HAUL_LOG,
    INPUTS_DIR,
    INPUTS_JSON,
    OUTPUTS_DIR,
    QUEUE_CONTROL,
    QUEUE_INPUTS,
    QUEUE_OUTPUTS,
    TASK_PREPARE_INPUTS,
    TASK_STORE_OUTPUTS,
)
from worker.sizes import format_size

if TYPE_CHECKING:
    from celery import Celery
    from redis import Redis

    from worker.settings import Settings

PROJECT = "demo"
DATASET = "dataset"
WORKER_READY_S = 90.0
TASK_TIMEOUT_S = 180.0
# When the demo shares a Redis with other haul workers, it uses queues of its own so that no
# other worker (with another data_dir) takes its tasks.
DEMO_QUEUES = {
    QUEUE_INPUTS: "haul-demo.inputs",
    QUEUE_OUTPUTS: "haul-demo.outputs",
    QUEUE_CONTROL: "haul-demo.control",
}


class DemoError(Exception):
    """Something the demo needs did not work; the message says what and where to look."""


# ============================================================================ output


class Screen:
    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.step = 0

    def title(self, text: str) -> None:
        self.step += 1
        self.out.write(f"\n== {self.step}. {text}\n")
        self.out.flush()

    def say(self, text: str = "") -> None:
        self.out.write(f"{text}\n")
        self.out.flush()

    def para(self, text: str) -> None:
        """Prose, wrapped to a readable width."""
        self.say(textwrap.fill(text, width=96, break_long_words=False, break_on_hyphens=False))

    def block(self, text: str) -> None:
        for line in text.rstrip("\n").splitlines():
            self.out.write(f"    {line}\n")
        self.out.flush()


# ============================================================================ sample data


def _labels(count: int, seed: int) -> bytes:
    rng = random.Random(seed)
    return struct.pack(">II", 2049, count) + bytes(rng.randrange(10) for _ in range(count))


def _images(count: int, seed: int) -> bytes:
    rng = random.Random(seed)
    rows = bytearray()
    for _ in range(count):
        cx, cy, r = rng.randrange(8, 20), rng.randrange(8, 20), rng.randrange(3, 8)
        for y in range(28):
            for x in range(28):
                inside = (x - cx) ** 2 + (y - cy) ** 2 <= r * r
                rows.append(255 - rng.randrange(40) if inside else rng.randrange(8))
    return struct.pack(">IIII", 2051, count, 28, 28) + bytes(rows)


def _gz(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=9, mtime=0)


def write_dataset(root: Path) -> dict[str, Path]:
    """A small MNIST-shaped dataset (IDX files, gzipped), the same bytes on every run."""
    root.mkdir(parents=True, exist_ok=True)
    files = {
        "train-labels.gz": _gz(_labels(60_000, seed=1)),
        "train-images.gz": _gz(_images(600, seed=2)),
        "t10k-labels.gz": _gz(_labels(10_000, seed=3)),
    }
    paths = {}
    for name, data in files.items():
        path = root / name
        _atomic_write(path, data)
        paths[name] = path
    return paths


def change_labels(path: Path) -> None:
    """New content for the labels file (as if the dataset's owner re-published it)."""
    _atomic_write(path, _gz(_labels(60_000, seed=4)))
    bumped = time.time() + 2  # a new Last-Modified, even within the same second
    os.utime(path, (bumped, bumped))


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def label_counts(labels_gz: Path) -> str:
    raw = gzip.decompress(labels_gz.read_bytes())
    _magic, count = struct.unpack(">II", raw[:8])
    counts = [0] * 10
    for b in raw[8 : 8 + count]:
        counts[b] += 1
    return "label,count\n" + "".join(f"{i},{n}\n" for i, n in enumerate(counts))


# ============================================================================ processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    check: Callable[[], bool], deadline_s: float, proc: subprocess.Popen[bytes] | None, what: str
) -> None:
    end = time.monotonic() + deadline_s
    last: Exception | None = None
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise DemoError(f"{what} exited with code {proc.returncode}")
        try:
            if check():
                return
        except Exception as exc:  # noqa: BLE001 (any failed probe means "not yet")
            last = exc
        time.sleep(0.1)
    raise DemoError(f"{what} was not ready after {deadline_s:g} s ({last!r})")


def stop_process(proc: subprocess.Popen[bytes], grace_s: float = 30.0) -> None:
    """SIGTERM this one process, wait, then SIGKILL it; by PID, never by name."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ping(url: str) -> bool:
    from redis import Redis
    from redis.exceptions import RedisError

    client: Redis[bytes] = Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)
    try:
        return bool(client.ping())
    except RedisError:
        return False
    finally:
        client.close()


def _redis_server_binary() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    for candidate in ("/usr/bin/redis-server", "/usr/sbin/redis-server"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # haul asks for the first byte only to learn size and ETag, then hangs up: a closed
        # connection here is normal, not worth a traceback on the demo's screen.
        return


@dataclass
class HttpServer:
    server: _QuietServer
    thread: threading.Thread

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"


@contextlib.contextmanager
def serve_directory(root: Path) -> Iterator[HttpServer]:
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = _QuietServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
    )
    thread.start()
    try:
        yield HttpServer(server, thread)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


# ============================================================================ the demo


class Demo:
    def __init__(
        self,
        settings: Settings,
        environ: Mapping[str, str],
        screen: Screen,
        stack: contextlib.ExitStack,
    ) -> None:
        self.settings = settings
        #: what the demo's worker process inherits (the caller's environment)
        self.environ = dict(environ)
        self.screen = screen
        self.stack = stack
        self.stamp = time.strftime("%Y%m%d-%H%M%S")
        self.data_dir = settings.data_dir / "demo"
        self.logs = self.data_dir / "logs"
        self.redis_url = settings.redis_url
        self.queues = {q: q for q in DEMO_QUEUES}
        self.worker_log = self.logs / f"worker-{self.stamp}.log"
        self.stopped: list[str] = []
        self.own_redis = False

    # ------------------------------------------------------------------ steps
    def start_redis(self) -> None:
        s = self.screen
        s.title("Redis (queue, datum index, change memory and events live there)")
        shown = _safe_url(self.settings.redis_url)
        if _ping(self.settings.redis_url):
            s.say(f"Using the Redis at {shown}: it answers PING.")
            self.queues = dict(DEMO_QUEUES)
            s.para(
                "Other haul workers may share this Redis, so the demo's worker listens on queues "
                f"of its own ({', '.join(DEMO_QUEUES.values())}) and no other worker takes the "
                "demo's tasks."
            )
            return
        binary = _redis_server_binary()
        if binary is None:
            raise DemoError(
                f"no Redis answers at {shown} and redis-server is not installed. "
                "Run `make demo` (it installs the Debian package redis-server), or "
                "`sudo apt-get install redis-server`, or point HAUL_REDIS_URL at a Redis."
            )
        redis_dir = self.settings.data_dir / "redis"
        redis_dir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        port = free_port()
        log_path = self.logs / f"redis-{self.stamp}.log"
        cmd = [
            binary,
            "--bind", "127.0.0.1",
            "--port", str(port),
            "--appendonly", "yes",
            "--dir", str(redis_dir),
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(log_path),
        ]  # fmt: skip
        s.say(f"No Redis answers at {shown}; starting {binary} on 127.0.0.1:{port}.")
        proc = subprocess.Popen(
            cmd,
            env=self.environ,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.stack.callback(self._stop, proc, "redis-server")
        self.redis_url = f"redis://127.0.0.1:{port}/0"
        self.own_redis = True
        wait_until(lambda: _ping(self.redis_url), 20.0, proc, "redis-server")
        s.para(
            f"Redis is up (pid {proc.pid}). It keeps an append-only file in {redis_dir}, so the "
            "datum index and the change memory survive a restart."
        )

    def serve_dataset(self) -> tuple[str, dict[str, Path]]:
        s = self.screen
        s.title("A sample dataset on a local HTTP server")
        www = self.data_dir / "www"
        paths = write_dataset(www / DATASET)
        server = self.stack.enter_context(serve_directory(www))
        self.stack.callback(self.stopped.append, "the HTTP server")
        s.say(f"Serving {www} at {server.base_url}/ (Python's http.server, in this process):")
        for name, path in paths.items():
            s.say(f"    {server.base_url}/{DATASET}/{name}  {format_size(path.stat().st_size)}")
        return f"{server.base_url}/{DATASET}", paths

    def start_worker(self) -> Celery:
        s = self.screen
        s.title("A haul worker")
        self.logs.mkdir(parents=True, exist_ok=True)
        name = f"haul-demo-{self.stamp}@{socket.gethostname()}"
        queues = ",".join(self.queues.values())
        cmd = [sys.executable, "-m", "celery", "-A", "tasks", "worker", "-Q", queues]
        cmd += ["--concurrency", "1", "--loglevel", "INFO", "--hostname", name]
        env = {
            **self.environ,
            "HAUL_DATA_DIR": str(self.data_dir),
            "HAUL_REDIS_URL": self.redis_url,
            "HAUL_ALLOW_PRIVATE_ADDRESSES": "true",
            # Any free port: the demo must not collide with a worker already on 9808.
            "HAUL_METRICS_BIND": "127.0.0.1:0",
        }
        s.say(f"Starting: celery -A tasks worker -Q {queues} --concurrency 1")
        s.say(f"    HAUL_DATA_DIR={self.data_dir}")
        s.say(f"    HAUL_REDIS_URL={_safe_url(self.redis_url)}")
        s.say(
            "    HAUL_ALLOW_PRIVATE_ADDRESSES=true: the sample server is on 127.0.0.1, and haul "
            "refuses\n    loopback, private and link-local addresses by default (they can reach "
            "internal services\n    and the cloud metadata endpoint). Leave it false in production."
        )
        log = self.stack.enter_context(self.worker_log.open("wb"))
        proc = subprocess.Popen(
            cmd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.stack.callback(self._stop, proc, "the worker")
        app = self._client()
        started = time.monotonic()
        try:
            wait_until(
                lambda: bool(app.control.ping(destination=[name], timeout=0.5)),
                WORKER_READY_S,
                proc,
                "the worker",
            )
        except DemoError as exc:
            raise DemoError(
                f"{exc}; its log ({self.worker_log}) ends with:\n" + tail(self.worker_log)
            ) from None
        s.say(f"The worker (pid {proc.pid}) answers ping after {time.monotonic() - started:.1f} s.")
        s.say(f"Its log: {self.worker_log}")
        return app

    def _client(self) -> Celery:
        from worker.cli.client import celery_client

        client_settings = self.settings.model_copy(update={"redis_url": self.redis_url})
        return celery_client(client_settings)

    def run_task(self, app: Celery, task: str, message: dict[str, Any], queue: str) -> Any:
        from worker.cli.client import send

        result = send(app, task, message, self.queues[queue])
        value = result.get(timeout=TASK_TIMEOUT_S, propagate=False)
        if result.failed():
            raise DemoError(
                f"{task} for {message.get('execution_id')} failed: {value!r}\n"
                f"the worker's log ({self.worker_log}) ends with:\n{tail(self.worker_log)}"
            )
        return value

    def prepare(self, app: Celery, execution: str, base_url: str, files: list[str]) -> None:
        s = self.screen
        message = {
            "execution_id": execution,
            "project_id": PROJECT,
            "inputs": [{"name": DATASET, "urls": [f"{base_url}/{name}" for name in files]}],
        }
        s.say(f"Sending haul.prepare_inputs for execution {execution}:")
        s.block(json.dumps(message, indent=2))
        summary = self.run_task(app, TASK_PREPARE_INPUTS, message, QUEUE_INPUTS)
        s.say(
            f"Inputs ready: {summary['files']} files, {format_size(summary['bytes'])} in "
            f"{summary['seconds']} s."
        )
        exec_dir = self.data_dir / "executions" / execution
        s.say(f"The execution's folder: {exec_dir}")
        s.say(f"    {INPUTS_DIR}/{DATASET}/  the files, complete (never partial)")
        s.say(f"    {CONFIG_DIR}/{INPUTS_JSON}  names, paths, sizes and checksums, for the program")
        s.say(f"    {OUTPUTS_DIR}/  empty, for the program to write into")
        s.say(f"Its {HAUL_LOG}:")
        s.block((exec_dir / HAUL_LOG).read_text())

    def store_output(self, app: Celery, execution: str) -> None:
        from worker.records.datums import DatumIndex
        from worker.settings import LocalStoreConfig

        s = self.screen
        exec_dir = self.data_dir / "executions" / execution
        outputs = exec_dir / OUTPUTS_DIR
        out_file = outputs / "label-counts.csv"
        out_file.write_text(label_counts(exec_dir / INPUTS_DIR / DATASET / "train-labels.gz"))
        sidecar = outputs / "label-counts.csv.metadata.json"
        sidecar.write_text(
            json.dumps(
                {
                    "valohai.tags": ["demo", "label-counts"],
                    "valohai.alias": "demo-label-counts",
                    "made_by": "haul demo",
                },
                indent=2,
            )
        )
        s.say(f"The program of {execution} wrote (counts of each label in train-labels.gz):")
        s.say(f"    {out_file}")
        s.say(f"    {sidecar.name}  (tags and alias for its datum; not stored as a datum)")
        message = {"execution_id": execution, "project_id": PROJECT}
        s.say(f"Sending haul.store_outputs {json.dumps(message)}")
        summary = self.run_task(app, TASK_STORE_OUTPUTS, message, QUEUE_OUTPUTS)
        s.say(f"Stored {summary['files']} output(s) in store {summary['store']!r}:")
        store_cfg = self.settings.model_copy(update={"data_dir": self.data_dir}).all_stores()[
            summary["store"]
        ]
        from redis import Redis

        client: Redis[bytes] = Redis.from_url(self.redis_url)
        try:
            index = DatumIndex(client)
            for d in summary["datums"]:
                datum = index.get(d["datum_id"])
                s.say(f"    datum    datum://{datum.datum_id}")
                s.say(f"    path     {datum.path} ({format_size(datum.size)})")
                s.say(f"    key      {datum.key}")
                s.say(
                    "             (content-addressed: data/<project>/<sha256[0:2]>/<sha256>/<name>)"
                )
                s.say(f"    uri      {datum.uri}")
                if isinstance(store_cfg, LocalStoreConfig):
                    s.say(f"    on disk  {store_cfg.path / datum.key}")
                s.say(f"    sha256   {datum.sha256}")
                s.say(f"    tags     {', '.join(datum.tags)}; alias {datum.alias}")
                if d["deduplicated"]:
                    s.say("    (this content was already in the store, so it was not copied again)")
        finally:
            client.close()
        first = summary["datums"][0]["datum_id"]
        s.say(
            "A later execution can use it as an input: "
            f'{{"name": "counts", "urls": ["datum://{first}"]}}'
        )

    def show_events(self, after: str, executions: set[str]) -> None:
        from redis import Redis

        from worker.cli.rendering import format_event

        s = self.screen
        stream = self.settings.events_stream
        s.title(f"The events haul published (Redis stream {stream!r})")
        client: Redis[bytes] = Redis.from_url(self.redis_url)
        shown = 0
        try:
            cursor = after
            while True:
                page = client.xrange(stream, min=f"({cursor}", count=500)
                if not page:
                    break
                for entry_id, fields in page:
                    cursor = entry_id.decode()
                    raw = fields.get(b"event")
                    if raw is None:
                        continue
                    event = json.loads(raw)
                    if event.get("subject") in executions:
                        s.say("    " + format_event(event))
                        shown += 1
        finally:
            client.close()
        s.para(
            f"{shown} events, each a CloudEvents 1.0 JSON object on the stream. Watch them live "
            "with `haul events --follow`, or as JSON with `haul events --json`"
            + (
                " (against a running Redis: this demo's own Redis stops at the end)."
                if self.own_redis
                else "."
            )
        )

    def show_dashboard(self, executions: list[str]) -> None:
        """Start ``haul web`` on the demo's Redis and data, wait until it shows the demo's
        executions, and point at it; with a terminal, keep it up until Enter."""
        import importlib.util

        import httpx

        s = self.screen
        s.title("The dashboard (haul web)")
        if importlib.util.find_spec("fastapi") is None:
            s.para("haul web's dependencies are missing here (pip install 'haul-worker'); skipped.")
            return
        host, _, port_text = self.settings.web_bind.rpartition(":")
        port = int(port_text) if host in {"127.0.0.1", "localhost"} and _free(int(port_text)) else 0
        port = port or free_port()
        url = f"http://127.0.0.1:{port}"
        env = {
            **self.environ,
            "HAUL_DATA_DIR": str(self.data_dir),
            "HAUL_REDIS_URL": self.redis_url,
        }
        env.pop("HAUL_WEB_DATABASE_URL", None)
        log_path = self.logs / f"web-{self.stamp}.log"
        log = self.stack.enter_context(log_path.open("wb"))
        cmd = [sys.executable, "-m", "worker.cli", "web", "--bind", f"127.0.0.1:{port}"]
        proc = subprocess.Popen(
            cmd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        self.stack.callback(self._stop, proc, "the dashboard")

        def shows_all() -> bool:
            return all(
                httpx.get(f"{url}/api/executions/{e}", timeout=2).status_code == 200
                for e in executions
            )

        try:
            wait_until(shows_all, WORKER_READY_S, proc, "the dashboard")
        except DemoError as exc:
            raise DemoError(f"{exc}; its log ({log_path}):\n" + tail(log_path)) from None
        s.say(f"The dashboard (pid {proc.pid}) shows the demo's executions at {url}/")
        s.say(f"    {url}/executions/{executions[-1]}  the change warning, hashes before and after")
        s.say(f"    {url}/executions  every execution, with a warning badge on the changed one")
        s.say(f"Its log: {log_path}; its database: {self.data_dir / 'web.sqlite3'}")
        if sys.stdin.isatty():
            with contextlib.suppress(EOFError):
                input("Press Enter to stop the demo (the dashboard, the worker and Redis) ... ")

    def _stop(self, proc: subprocess.Popen[bytes], what: str) -> None:
        stop_process(proc)
        self.stopped.append(f"{what} (pid {proc.pid})")

    # ------------------------------------------------------------------ the whole run
    def run(self) -> None:
        from redis import Redis

        s = self.screen
        self.start_redis()
        base_url, paths = self.serve_dataset()
        app = self.start_worker()
        client: Redis[bytes] = Redis.from_url(self.redis_url)
        newest = client.xrevrange(self.settings.events_stream, count=1)
        client.close()
        events_after = newest[0][0].decode() if newest else "0-0"

        exec1, exec2 = f"demo-{self.stamp}-1", f"demo-{self.stamp}-2"
        names = list(paths)
        s.title(f"Execution {exec1}: prepare its inputs")
        self.prepare(app, exec1, base_url, names)

        s.title(f"The dataset changes, then execution {exec2} prepares the same inputs")
        before = paths["train-labels.gz"].stat().st_size
        change_labels(paths["train-labels.gz"])
        after = paths["train-labels.gz"].stat().st_size
        sizes = (
            f"still {format_size(after)}"
            if format_size(before) == format_size(after)
            else f"{format_size(before)} -> {format_size(after)}"
        )
        s.say(f"train-labels.gz now holds other labels ({sizes}), at the same URL.")
        self.prepare(app, exec2, base_url, names)
        s.para(
            "The warning: line above is haul noticing that the same URL gave other bytes than "
            f"for {exec1}. The execution still succeeds; the haul.input.changed event says the "
            "same for machines."
        )

        s.title(f"Execution {exec2} writes an output; haul stores it")
        self.store_output(app, exec2)

        self.show_events(events_after, {exec1, exec2})
        self.show_dashboard([exec1, exec2])


def _safe_url(url: str) -> str:
    from worker.urls import redact_url

    return redact_url(url)


def main(settings: Settings, environ: Mapping[str, str], out: TextIO | None = None) -> int:
    """Run the demo; 0 when everything worked, 1 otherwise (the message says why).

    ``environ`` is what the demo's worker process starts from (the CLI passes its own), so
    the worker reads the same configuration file and store settings as the command.
    """
    screen = Screen(out or sys.stdout)
    screen.say(
        "haul demo: one run of haul's main job on this machine, on the embedded defaults.\n"
        "It downloads a sample dataset for two executions (the dataset changes in between),\n"
        "stores an output, and shows what haul recorded. Everything it starts, it stops."
    )
    code = 0
    demo: Demo | None = None
    with contextlib.ExitStack() as stack:
        demo = Demo(settings, environ, screen, stack)
        try:
            demo.run()
        except DemoError as exc:
            screen.say(f"\nhaul demo failed: {exc}")
            code = 1
        except KeyboardInterrupt:
            screen.say("\nInterrupted; stopping what the demo started.")
            code = 130
        except Exception as exc:  # noqa: BLE001 (the demo explains, then still cleans up)
            screen.say(f"\nhaul demo failed unexpectedly: {type(exc).__name__}: {exc}")
            screen.say(f"The worker's log: {demo.worker_log}")
            code = 1
        screen.title("Cleaning up")
    if demo is not None:
        screen.say(f"Stopped {', '.join(demo.stopped) or 'nothing'}.")
        screen.say(f"The demo's files stay in {demo.data_dir} (delete it to start afresh).")
    if code == 0:
        screen.say("\nDone. Next: `haul --help`, `haul worker`, `haul submit --help`, `haul web`.")
    return code
