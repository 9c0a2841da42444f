"""``haul``: the command line of the haul worker.

One entry point, :func:`main`. The settings are read once here (``load_settings``) and handed to
each subcommand; nothing below reads the environment again. Heavy imports (Celery, the
pipeline, the demo) happen inside the subcommand that needs them, so ``haul --help`` and
``haul hash`` stay fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from worker.constants import (
    EV_DATUM_PURGED,
    EV_INPUTS_FAILED,
    EV_INPUTS_READY,
    EV_MESSAGE_REJECTED,
    EV_OUTPUTS_FAILED,
    EV_OUTPUTS_STORED,
    QUEUE_CONTROL,
    QUEUE_INPUTS,
    QUEUE_OUTPUTS,
    QUEUE_WATCH,
    TASK_PREPARE_INPUTS,
    TASK_PURGE,
    TASK_QUEUES,
    TASK_STORE_OUTPUTS,
)
from worker.errors import ConfigError, HaulError, MessageError
from worker.sizes import format_size

if TYPE_CHECKING:
    from celery import Celery
    from redis import Redis

    from worker.settings import Settings

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3

ALL_QUEUES = f"{QUEUE_INPUTS},{QUEUE_OUTPUTS},{QUEUE_CONTROL},{QUEUE_WATCH}"
SUBMIT_KINDS = {"inputs": TASK_PREPARE_INPUTS, "outputs": TASK_STORE_OUTPUTS, "purge": TASK_PURGE}

Handler = Callable[[argparse.Namespace, "Settings"], int]


def _err(message: str) -> None:
    print(f"haul: {message}", file=sys.stderr)


# ============================================================================ event lines


def _clock(event: dict[str, Any]) -> str:
    """The event's time as local ``HH:MM:SS`` (events carry UTC ISO-8601)."""
    raw = str(event.get("time") or "")
    try:
        return datetime.fromisoformat(raw.replace("Z", "+00:00")).astimezone().strftime("%H:%M:%S")
    except ValueError:
        return "--:--:--"


def _short(digest: Any) -> str:
    return f"{str(digest)[:12]}…" if digest else "?"


def _size(value: Any) -> str:
    return format_size(int(value)) if isinstance(value, int) else "? B"


def _error(data: dict[str, Any]) -> str:
    err = data.get("error") or {}
    return f"{err.get('code', 'error')}: {err.get('message', '')}"


def _summary(kind: str, d: dict[str, Any]) -> str:
    if kind == "input.downloaded":
        cached = " (already here, not downloaded again)" if d.get("cached") else ""
        return f"{d.get('path')} {_size(d.get('size'))} sha256 {d.get('sha256')}{cached}"
    if kind == "input.changed":
        return f"warning: {d.get('message')}"
    if kind == "input.skipped":
        return f"input {d.get('input')}: skipped {d.get('url')}: {d.get('reason')}"
    if kind in ("inputs.ready", "outputs.stored"):
        return f"{d.get('files')} file(s), {_size(d.get('bytes'))} in {d.get('seconds')} s"
    if kind == "inputs.failed":
        where = f"input {d.get('input')}" if d.get("input") else "inputs"
        url = f" ({d.get('url')})" if d.get("url") else ""
        return f"{where}{url} failed: {_error(d)}"
    if kind == "output.stored":
        dedup = ", already stored (deduplicated)" if d.get("deduplicated") else ""
        return (
            f"{d.get('path')} -> {d.get('uri')} ({_size(d.get('size'))}, "
            f"sha256 {_short(d.get('sha256'))}, datum {d.get('datum_id')}{dedup})"
        )
    if kind == "output.refused":
        return f"{d.get('path')} refused: {d.get('reason')}"
    if kind == "outputs.failed":
        return f"outputs failed: {_error(d)}"
    if kind == "datum.purged":
        kept = "content removed" if d.get("content_removed") else "content kept (still referenced)"
        return f"datum {d.get('datum_id')} purged, {kept}"
    if kind == "message.rejected":
        problems = "; ".join(
            f"{e.get('field') or '(message)'}: {e.get('problem')}" for e in d.get("errors") or []
        )
        return f"{d.get('task')} message rejected: {problems or d.get('reason')}"
    if kind == "transfer.progress":
        total = d.get("bytes_total")
        done = int(d.get("bytes_done") or 0)
        pct = f" ({100 * done // total}%)" if isinstance(total, int) and total > 0 else ""
        of = f" of {_size(total)}" if isinstance(total, int) else ""
        eta = f", about {round(d['eta_s'])} s left" if d.get("eta_s") is not None else ""
        rate = _size(int(d.get("rate_bytes_s") or 0))
        return f"{d.get('path')} {_size(done)}{of}{pct} at {rate}/s{eta}"
    return json.dumps(d, ensure_ascii=False)[:200]


def format_event(event: dict[str, Any]) -> str:
    """One readable line: ``HH:MM:SS type subject: summary``."""
    kind = str(event.get("type", "?")).removeprefix("haul.")
    data = event.get("data") if isinstance(event.get("data"), dict) else {}
    assert isinstance(data, dict)
    subject = event.get("subject") or data.get("project_id") or "-"
    return f"{_clock(event)} {kind} {subject}: {_summary(kind, data)}"


# ============================================================================ the stream


def _redis(settings: Settings) -> Redis[bytes]:
    from redis import Redis

    return Redis.from_url(settings.redis_url, socket_connect_timeout=5)


def _decode(fields: dict[bytes, bytes]) -> dict[str, Any] | None:
    raw = fields.get(b"event")
    if raw is None:
        return None
    try:
        event = json.loads(raw)
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


def last_stream_id(client: Redis[bytes], stream: str) -> str:
    """The id of the newest entry (``0-0`` for an empty stream): read after it to miss nothing."""
    newest = client.xrevrange(stream, count=1)
    return newest[0][0].decode() if newest else "0-0"


def read_events(
    client: Redis[bytes], stream: str, after: str, block_ms: int
) -> tuple[str, list[dict[str, Any]]]:
    """Entries after ``after`` (XREAD BLOCK ``block_ms``); returns the new cursor and events."""
    reply = client.xread({stream: after}, block=block_ms, count=500)
    events: list[dict[str, Any]] = []
    for _name, entries in reply or []:
        for entry_id, fields in entries:
            after = entry_id.decode()
            event = _decode(fields)
            if event is not None:
                events.append(event)
    return after, events


def _matches(event: dict[str, Any], execution: str | None, type_prefix: str | None) -> bool:
    if execution is not None:
        data = event.get("data") or {}
        if event.get("subject") != execution and data.get("execution_id") != execution:
            return False
    if type_prefix:
        prefix = type_prefix if type_prefix.startswith("haul.") else f"haul.{type_prefix}"
        if not str(event.get("type", "")).startswith(prefix):
            return False
    return True


def _recent(
    client: Redis[bytes], stream: str, count: int, keep: Callable[[dict[str, Any]], bool]
) -> tuple[str, list[dict[str, Any]]]:
    """The newest ``count`` matching events, oldest first, and the stream's newest id."""
    newest = last_stream_id(client, stream)
    found: list[dict[str, Any]] = []
    upper = "+"
    while len(found) < count:
        page = client.xrevrange(stream, max=upper, count=500)
        if not page:
            break
        for _entry_id, fields in page:
            event = _decode(fields)
            if event is not None and keep(event):
                found.append(event)
                if len(found) == count:
                    break
        ms, seq = page[-1][0].decode().split("-")
        if int(seq) > 0:
            upper = f"{ms}-{int(seq) - 1}"
        elif int(ms) > 0:
            upper = f"{int(ms) - 1}-18446744073709551615"
        else:
            break
    found.reverse()
    return newest, found


def _print_event(event: dict[str, Any], as_json: bool, out: TextIO) -> None:
    if as_json:
        out.write(json.dumps(event, ensure_ascii=False, separators=(",", ":")) + "\n")
    else:
        out.write(format_event(event) + "\n")
    out.flush()


def cmd_events(args: argparse.Namespace, settings: Settings) -> int:
    client = _redis(settings)
    stream = settings.events_stream

    def keep(ev: dict[str, Any]) -> bool:
        return _matches(ev, args.execution, args.type)

    cursor, events = _recent(client, stream, args.count, keep)
    for event in events:
        _print_event(event, args.json, sys.stdout)
    if not args.follow:
        if not events and not args.json:
            print(f"(no events on stream {stream!r} at {_shown_redis(settings)})", file=sys.stderr)
        return EXIT_OK
    try:
        while True:
            cursor, new = read_events(client, stream, cursor, block_ms=5000)
            for event in new:
                if keep(event):
                    _print_event(event, args.json, sys.stdout)
    except KeyboardInterrupt:
        return EXIT_OK


def _shown_redis(settings: Settings) -> str:
    from worker.urls import redact_url

    return redact_url(settings.redis_url)


# ============================================================================ submit


def celery_client(settings: Settings) -> Celery:
    """A Celery app that only sends: the worker's own configuration, built from ``settings``."""
    from celery import Celery

    from tasks.config import celery_config

    app = Celery("haul-cli", set_as_current=False)
    app.conf.update(celery_config(settings))
    return app


def send(app: Celery, task: str, message: dict[str, Any], queue: str) -> Any:
    """Enqueue ``message`` for ``task`` on ``queue`` (each haul queue has its own exchange).

    The exchange and routing key are given too: otherwise the app's ``task_routes`` would
    route to the task's default queue whatever ``queue`` says.
    """
    return app.send_task(task, args=[message], queue=queue, exchange=queue, routing_key=queue)


def _parse_input(text: str) -> tuple[str, list[str]]:
    name, sep, urls = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=URL[,URL...], got {text!r}")
    return name, [u for u in urls.split(",") if u]


def build_message(args: argparse.Namespace) -> Any:
    """The message from ``--file`` (a path or ``-``), or from the flags."""
    if args.file is not None:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
        try:
            payload = json.loads(text)
        except ValueError as exc:
            raise MessageError(
                f"{args.file} is not JSON: {exc}", [{"field": "", "problem": f"not JSON: {exc}"}]
            ) from None
        return payload  # not necessarily an object: validation reports that
    msg: dict[str, Any] = {}
    if args.kind in ("inputs", "outputs"):
        msg["execution_id"] = args.execution
    msg["project_id"] = args.project
    if args.kind in ("inputs", "outputs") and args.store:
        msg["store"] = args.store
    if args.kind == "inputs":
        inputs = []
        for name, urls in args.input or []:
            spec: dict[str, Any] = {"name": name, "urls": urls}
            if args.filename is not None:
                spec["filename"] = args.filename
            if args.keep_directories is not None:
                spec["keep_directories"] = args.keep_directories
            if args.optional:
                spec["optional"] = True
            inputs.append(spec)
        msg["inputs"] = inputs
    if args.kind == "purge":
        msg["datum_ids"] = list(args.datum or [])
    return {k: v for k, v in msg.items() if v is not None}


class _Waiter:
    """Decides from the events (and the task's own state) when a submitted message is done."""

    def __init__(self, task: str, message: dict[str, Any]) -> None:
        self.task = task
        self.execution = message.get("execution_id")
        self.project = message.get("project_id")
        self.datums = set(message.get("datum_ids") or [])
        self.outcome: int | None = None

    def relevant(self, event: dict[str, Any]) -> bool:
        data = event.get("data") or {}
        kind = event.get("type")
        if kind == EV_MESSAGE_REJECTED:
            return bool(data.get("task") == self.task)
        if self.task == TASK_PURGE:
            return kind == EV_DATUM_PURGED and data.get("project_id") == self.project
        if event.get("subject") != self.execution and data.get("execution_id") != self.execution:
            return False
        project = data.get("project_id")
        return project is None or project == self.project

    def see(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        data = event.get("data") or {}
        if kind == EV_MESSAGE_REJECTED:
            self.outcome = EXIT_FAILED
        elif self.task == TASK_PREPARE_INPUTS and kind in (EV_INPUTS_READY, EV_INPUTS_FAILED):
            self.outcome = EXIT_OK if kind == EV_INPUTS_READY else EXIT_FAILED
        elif self.task == TASK_STORE_OUTPUTS and kind in (EV_OUTPUTS_STORED, EV_OUTPUTS_FAILED):
            self.outcome = EXIT_OK if kind == EV_OUTPUTS_STORED else EXIT_FAILED
        elif self.task == TASK_PURGE and kind == EV_DATUM_PURGED:
            self.datums.discard(str(data.get("datum_id")))
            if not self.datums:
                self.outcome = EXIT_OK


def wait_for(
    client: Redis[bytes],
    stream: str,
    after: str,
    waiter: _Waiter,
    result: Any,
    timeout_s: float,
    out: TextIO,
) -> int:
    """Print the message's events until its terminal one; exit code 0, 1 or 3 (timeout)."""
    deadline = time.monotonic() + timeout_s
    finished_seen = False
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            print(
                f"haul: gave up waiting after {timeout_s:g} s (task {result.id} is "
                f"{result.state}); the worker may still finish it, see `haul events`",
                file=sys.stderr,
            )
            return EXIT_TIMEOUT
        after, events = read_events(client, stream, after, block_ms=int(min(left, 1.0) * 1000))
        for event in events:
            if waiter.relevant(event):
                out.write(format_event(event) + "\n")
                out.flush()
                waiter.see(event)
        if waiter.outcome is not None:
            return waiter.outcome
        # Events are published before the task returns; once it has returned and a final read
        # showed nothing terminal, judge by the task's own result.
        if finished_seen:
            return _judge_result(result, out)
        finished_seen = bool(result.ready()) if result is not None else False


def _judge_result(result: Any, out: TextIO) -> int:
    if result.failed():
        print(f"haul: task {result.id} failed: {result.result!r}", file=sys.stderr)
        return EXIT_FAILED
    value = result.result if isinstance(result.result, dict) else {}
    unknown = value.get("unknown") or []
    if unknown:
        out.write(f"unknown datum id(s), nothing purged for them: {', '.join(unknown)}\n")
        return EXIT_FAILED
    out.write(f"task {result.id} finished: {value.get('status', result.state)}\n")
    return EXIT_OK if value.get("status") != "rejected" else EXIT_FAILED


def cmd_submit(args: argparse.Namespace, settings: Settings) -> int:
    from worker.models import MESSAGES, validate_message

    task = SUBMIT_KINDS[args.kind]
    try:
        message = build_message(args)
        validate_message(MESSAGES[task], message)
    except MessageError as exc:
        print(f"haul: invalid {task} message, nothing was sent:", file=sys.stderr)
        for problem in exc.errors:
            print(f"  {problem['field'] or '(message)'}: {problem['problem']}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        _err(f"cannot read the message: {exc}")
        return EXIT_USAGE

    queue = args.queue or TASK_QUEUES[task]
    client = _redis(settings)
    # Celery would retry a dead broker for 20 s and end in a RuntimeError: ask once first.
    client.ping()
    after = last_stream_id(client, settings.events_stream) if args.wait else "0-0"
    app = celery_client(settings)
    result = send(app, task, message, queue)
    print(result.id)
    sys.stdout.flush()
    if not args.wait:
        return EXIT_OK
    waiter = _Waiter(task, message)
    return wait_for(client, settings.events_stream, after, waiter, result, args.timeout, sys.stdout)


# ============================================================================ other commands


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    argv = [sys.executable, "-m", "celery", "-A", "tasks", "worker", "-Q", args.queues]
    argv += ["--loglevel", args.loglevel or settings.log_level]
    if args.concurrency is not None:
        argv += ["--concurrency", str(args.concurrency)]
    if args.hostname:
        argv += ["--hostname", args.hostname]
    # SIGTERM handling (soft shutdown, then requeue) is set up by the app itself: tasks/app.py.
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)  # noqa: S606 (replaces this process; signals go to Celery)
    return EXIT_FAILED  # pragma: no cover


def cmd_hash(args: argparse.Namespace, settings: Settings) -> int:
    from worker.records.haul_log import file_lines
    from worker.transfer.sink import hash_path

    status = EXIT_OK
    for name in args.files:
        path = Path(name)
        if not path.is_file():
            _err(f"{name}: no such file" if not path.exists() else f"{name}: not a regular file")
            status = EXIT_FAILED
            continue
        try:
            digests = hash_path(path)
        except OSError as exc:
            _err(f"{name}: cannot read: {exc.strerror or exc}")
            status = EXIT_FAILED
            continue
        for line in file_lines(name, digests):
            print(line)
    return status


def cmd_fetch(args: argparse.Namespace, settings: Settings) -> int:
    try:
        from worker.fetch import run_fetch
    except ImportError:
        _err("`haul fetch` is not available in this version (worker.fetch is missing)")
        return EXIT_FAILED
    code: int = run_fetch(list(args.urls), Path(args.to), settings, sys.stdout)
    return code


def cmd_reindex(args: argparse.Namespace, settings: Settings) -> int:
    from worker.records.reindex import reindex_store
    from worker.stores.registry import build_store

    stores = settings.all_stores()
    if args.store not in stores:
        _err(f"unknown store {args.store!r} (declared: {', '.join(sorted(stores))})")
        return EXIT_USAGE
    store = build_store(
        args.store, stores[args.store], settings.store_secrets(args.store), settings
    )
    try:
        done = reindex_store(_redis(settings), store)
    finally:
        store.close()
    print(f"reindexed {done.datums} datum record(s) from store {args.store!r} into Redis")
    print(
        f"reindexed {done.alias_moves} alias move(s) and {done.dataset_versions} dataset "
        f"version(s) from store {args.store!r} into Redis"
    )
    return EXIT_OK


def settings_view(settings: Settings) -> dict[str, Any]:
    """The settings as JSON, with every store (the embedded default too), without secrets."""
    from worker.urls import redact_url

    view = settings.model_dump(mode="json", exclude={"secrets", "stores"})
    view["redis_url"] = redact_url(settings.redis_url)
    view["stores"] = {
        name: cfg.model_dump(mode="json") for name, cfg in sorted(settings.all_stores().items())
    }
    return view


def cmd_config(args: argparse.Namespace, settings: Settings) -> int:
    view = settings_view(settings)
    if args.json:
        print(json.dumps(view, indent=2, sort_keys=True))
        return EXIT_OK
    source = settings.config_file or "(none: embedded defaults)"
    print(f"# settings are valid; config file: {source}; HAUL_* environment variables applied")
    stores = view.pop("stores")
    projects = view.pop("projects")
    for key in sorted(view):
        print(f"{key} = {json.dumps(view[key])}")
    for name, cfg in stores.items():
        note = "  # the embedded default" if name not in settings.stores else ""
        print(f"\n[stores.{name}]{note}")
        for key, value in cfg.items():
            print(f"{key} = {json.dumps(value)}")
    for name, cfg in sorted(projects.items()):
        print(f"\n[projects.{name}]\nstore = {json.dumps(cfg['store'])}")
    print(f"\n# executions: {settings.executions_dir}")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from worker.demo import main as demo_main

    # The entry point hands its environment down: the demo's worker inherits it.
    code: int = demo_main(settings, os.environ)
    return code


# ============================================================================ the parser


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Wraps prose paragraphs to the terminal; keeps indented lines (examples) as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        import textwrap

        paragraphs = []
        for para in text.split("\n\n"):
            lines = para.splitlines()
            if any(line.startswith(" ") or line.endswith(":") for line in lines):
                paragraphs.append("\n".join(indent + line for line in lines))
            else:
                paragraphs.append(
                    textwrap.fill(
                        " ".join(lines), width, initial_indent=indent, subsequent_indent=indent
                    )
                )
        return "\n\n".join(paragraphs)


_MAIN_EPILOG = """\
examples:
  haul demo                                   run the whole job once on a local sample dataset
  haul worker                                 start a worker on the three haul queues
  haul submit inputs --execution exec-1 --project proj-42 \\
      --input dataset=https://example.com/train-labels.gz --wait
  haul events --follow                        watch what the workers do
  haul hash data/*.gz                         md5, sha1 and sha256, in haul.log's shape

Settings come from the TOML file in $HAUL_CONFIG (or --config) and HAUL_* environment
variables; `haul config` shows what is in effect. Exit codes: 0 ok, 1 failed,
2 bad usage, configuration or message, 3 timed out.
"""

_SUBMIT_EPILOG = """\
examples:
  haul submit inputs --execution exec-1 --project proj-42 \\
      --input dataset=https://example.com/a.gz,https://example.com/b.gz \\
      --input weights=s3://models/resnet/*.pt --keep-directories suffix --wait
  haul submit outputs --execution exec-1 --project proj-42 --wait
  haul submit purge --project proj-42 --datum 5f2c... --datum 77ab... --wait
  haul submit inputs --file message.json          # the message as JSON (or - for stdin)

The message is validated locally first; an invalid one is reported field by field and not
sent (exit 2). The task id is printed. With --wait the command follows the events of this
execution until it ends: exit 0 when it succeeded, 1 when it failed or was rejected, 3 when
--timeout passed first.
"""

_EVENTS_EPILOG = """\
examples:
  haul events                         the last 20 events, one readable line each
  haul events --follow --execution exec-1
  haul events --type inputs.failed --count 5
  haul events --json --count 100 > events.jsonl     CloudEvents 1.0, one JSON object a line

A readable line is `HH:MM:SS type subject: summary` (local time; subject is the execution).
"""


def _add_submit(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    submit = sub.add_parser(
        "submit",
        help="send a message (prepare inputs, store outputs, purge) to the workers",
        description="Build a haul message from flags or a JSON file, check it, and put it on "
        "its queue, as an orchestrator would.",
        epilog=_SUBMIT_EPILOG,
        formatter_class=_Formatter,
    )
    kinds = submit.add_subparsers(dest="kind", metavar="{inputs,outputs,purge}", required=True)
    descriptions = {
        "inputs": (
            "download, hash and lay out an execution's inputs (haul.prepare_inputs)",
            "Download each input's URLs into <data_dir>/executions/<execution>/inputs/<name>/, "
            "hash them (md5, sha1, sha256) and write haul.log and config/inputs.json.",
        ),
        "outputs": (
            "store every file of an execution's outputs/ as datums (haul.store_outputs)",
            "Upload every regular file under <data_dir>/executions/<execution>/outputs/ to the "
            "store at a content-addressed key; each becomes a datum.",
        ),
        "purge": (
            "remove datums from the store (haul.purge)",
            "Mark the datums purged and delete their content unless another datum uses it.",
        ),
    }
    for kind, (short, long) in descriptions.items():
        p = kinds.add_parser(
            kind,
            help=short,
            description=long,
            epilog=_SUBMIT_EPILOG,
            formatter_class=_Formatter,
        )
        p.set_defaults(func=cmd_submit, submit_parser=p)
        p.add_argument(
            "--file",
            metavar="PATH",
            help="read the whole message from this JSON file ('-' for stdin) instead of flags",
        )
        if kind != "purge":
            p.add_argument("--execution", metavar="ID", help="execution id, e.g. exec-0001")
        p.add_argument("--project", metavar="ID", help="project id, e.g. proj-42")
        if kind != "purge":
            p.add_argument(
                "--store",
                metavar="NAME",
                help="store for the outputs (default: the project's store, else default_store)",
            )
        if kind == "inputs":
            p.add_argument(
                "--input",
                metavar="NAME=URL[,URL...]",
                type=_parse_input,
                action="append",
                help="an input and its URLs (http(s)://, s3://, azure://, gs://, swift://, "
                "datum://); repeat for more inputs",
            )
            p.add_argument(
                "--keep-directories",
                choices=["none", "full", "suffix"],
                help="for the inputs given: keep no folders (default), the full key path, or "
                "the path below the first wildcard",
            )
            p.add_argument(
                "--optional",
                action="store_true",
                help="for the inputs given: a missing file is skipped instead of failing",
            )
            p.add_argument(
                "--filename", metavar="NAME", help="for the inputs given: rename the single file"
            )
        if kind == "purge":
            p.add_argument(
                "--datum", metavar="ID", action="append", help="datum id to purge; repeatable"
            )
        p.add_argument(
            "--queue",
            metavar="NAME",
            help=f"queue to send to (default: {TASK_QUEUES[SUBMIT_KINDS[kind]]})",
        )
        p.add_argument(
            "--wait",
            action="store_true",
            help="follow the events until the message is done; the exit code tells how it ended",
        )
        p.add_argument(
            "--timeout",
            metavar="S",
            type=float,
            default=600.0,
            help="with --wait: give up after S seconds, exit 3 (default: 600)",
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="haul",
        description="haul moves the data of ML executions: it downloads and hashes inputs "
        "before an execution starts, stores its outputs as content-addressed datums after it "
        "ends, and publishes every step as an event. It runs as Celery workers on Redis.",
        epilog=_MAIN_EPILOG,
        formatter_class=_Formatter,
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="settings file (TOML); default: $HAUL_CONFIG, else the embedded defaults",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "worker",
        help="run a worker that takes messages from the queues (Celery)",
        description="Start a haul worker: `celery -A tasks worker` on the haul queues. SIGTERM "
        "lets running tasks finish for a while, then puts them back on the queue.",
        epilog="examples:\n  haul worker\n  haul worker --queues haul.inputs --concurrency 4\n",
        formatter_class=_Formatter,
    )
    p.set_defaults(func=cmd_worker)
    p.add_argument(
        "--queues", default=ALL_QUEUES, help=f"comma-separated queues (default: {ALL_QUEUES})"
    )
    p.add_argument(
        "--concurrency",
        type=int,
        metavar="N",
        help="tasks run at once (default: worker_concurrency from the settings)",
    )
    p.add_argument(
        "--loglevel",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level (default: log_level from the settings)",
    )
    p.add_argument("--hostname", help="worker name, e.g. inputs-1@%%h (Celery's --hostname)")

    _add_submit(sub)

    p = sub.add_parser(
        "events",
        help="show the events stream in readable lines (or raw JSON)",
        description="Show the newest events of the haul events stream (a Redis Stream of "
        "CloudEvents), oldest first, and with --follow keep showing new ones.",
        epilog=_EVENTS_EPILOG,
        formatter_class=_Formatter,
    )
    p.set_defaults(func=cmd_events)
    p.add_argument("--follow", "-f", action="store_true", help="keep waiting for new events")
    p.add_argument("--json", action="store_true", help="print each event as one JSON line")
    p.add_argument("--execution", metavar="ID", help="only the events of this execution")
    p.add_argument(
        "--type", metavar="PREFIX", help="only events whose type starts with this, e.g. inputs."
    )
    p.add_argument(
        "--count", "-n", type=int, default=20, metavar="N", help="how many to show (default 20)"
    )

    p = sub.add_parser(
        "hash",
        help="print the md5, sha1 and sha256 of files, in haul.log's line shape",
        description="Hash local files in one read each and print the four haul.log lines "
        "(size, md5, sha1, sha256), to compare a file with what haul recorded.",
        epilog="example:\n  haul hash train-labels.gz train-images.gz\n",
        formatter_class=_Formatter,
    )
    p.set_defaults(func=cmd_hash)
    p.add_argument("files", nargs="+", metavar="FILE")

    p = sub.add_parser(
        "fetch",
        help="download URLs to a folder with haul's transfer engine, without a queue",
        description="Download URLs into a local folder the way a worker would (hashes included), "
        "without Redis or a worker.",
        epilog="example:\n  haul fetch https://example.com/train-labels.gz --to ./data\n",
        formatter_class=_Formatter,
    )
    p.set_defaults(func=cmd_fetch)
    p.add_argument("urls", nargs="+", metavar="URL")
    p.add_argument("--to", required=True, metavar="DIR", help="folder to download into")

    p = sub.add_parser(
        "reindex",
        help="rebuild the Redis datum, alias and dataset indexes from a store's records",
        description="Read every datum record (<prefix>/datums/<project>/<id>.json), alias move "
        "(<prefix>/aliases/...) and sealed dataset version (<prefix>/datasets/...) kept in the "
        "store and load them into Redis, e.g. after losing the Redis data.",
        epilog="example:\n  haul reindex default\n",
        formatter_class=_Formatter,
    )
    p.set_defaults(func=cmd_reindex)
    p.add_argument("store", metavar="STORE", help="a store name from the settings")

    p = sub.add_parser(
        "config",
        help="check the settings and print them (without secrets)",
        description="Load and validate the settings exactly as a worker would and print them: "
        "every store (the embedded default too), the projects and the paths. Secrets are never "
        "printed. A bad value exits 2 with a message naming the key.",
        epilog="examples:\n  haul config\n  HAUL_CONFIG=/etc/haul/haul.toml haul config --json\n",
        formatter_class=_Formatter,
    )
    p.set_defaults(func=cmd_config)
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser(
        "demo",
        help="run the whole job once on a generated sample dataset, and show what happens",
        description="Start (or reuse) Redis, a local HTTP server with a sample dataset and a "
        "worker; prepare the inputs of two executions with the dataset changed in between, "
        "store an output, show haul.log, the datum and the events, then stop everything.",
        epilog="example:\n  haul demo\n",
        formatter_class=_Formatter,
    )
    p.set_defaults(func=cmd_demo)
    return parser


def _check_submit_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.file is not None:
        return
    if args.kind != "purge" and not args.execution:
        parser.error("--execution is required (or give the whole message with --file)")
    if not args.project:
        parser.error("--project is required (or give the whole message with --file)")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Handler | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return EXIT_USAGE
    if func is cmd_submit:
        _check_submit_flags(args.submit_parser, args)

    from worker.settings import CONFIG_ENV, load_settings

    if args.config:
        # Also what `haul worker` and the demo's worker read: they are other processes.
        os.environ[CONFIG_ENV] = args.config
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"haul: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return func(args, settings)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `haul events | head`: the reader is done; say nothing more on a closed pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except HaulError as exc:
        _err(str(exc))
        return EXIT_FAILED
    except Exception as exc:
        if not _is_broker_error(exc):
            raise
        _err(f"cannot use Redis at {_shown_redis(settings)}: {exc}")
        return EXIT_FAILED


def _is_broker_error(exc: Exception) -> bool:
    """A Redis or kombu connection error, without importing either (60 ms of every start):
    a command that never imported them cannot have raised their errors."""
    kinds = tuple(
        kind
        for module, name in (
            ("redis.exceptions", "RedisError"),
            ("kombu.exceptions", "OperationalError"),
        )
        if (kind := getattr(sys.modules.get(module), name, None)) is not None
    )
    return bool(kinds) and isinstance(exc, kinds)


if __name__ == "__main__":
    sys.exit(main())
