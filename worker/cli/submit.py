"""``haul submit``: build a message, check it locally, send it, and with ``--wait`` follow it."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from worker.cli.client import celery_client, last_stream_id, read_events, redis_client, send
from worker.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    Formatter,
    Subparsers,
    err,
)
from worker.cli.progress import Bars, wanted
from worker.cli.rendering import format_event
from worker.constants import (
    EV_DATUM_PURGED,
    EV_INPUT_DOWNLOADED,
    EV_INPUTS_FAILED,
    EV_INPUTS_READY,
    EV_MESSAGE_REJECTED,
    EV_OUTPUTS_FAILED,
    EV_OUTPUTS_STORED,
    TASK_PREPARE_INPUTS,
    TASK_PURGE,
    TASK_QUEUES,
    TASK_STORE_OUTPUTS,
)
from worker.delivery import DeliveryCheck, Sent
from worker.errors import MessageError

if TYPE_CHECKING:
    from redis import Redis

    from worker.settings import Settings

SUBMIT_KINDS = {"inputs": TASK_PREPARE_INPUTS, "outputs": TASK_STORE_OUTPUTS, "purge": TASK_PURGE}

_EPILOG = """\
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

_KINDS = {
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


# ============================================================================ the parser


def register(sub: Subparsers[argparse.ArgumentParser]) -> None:
    submit = sub.add_parser(
        "submit",
        help="send a message (prepare inputs, store outputs, purge) to the workers",
        description="Build a haul message from flags or a JSON file, check it, and put it on "
        "its queue, as an orchestrator would.",
        epilog=_EPILOG,
        formatter_class=Formatter,
    )
    kinds = submit.add_subparsers(dest="kind", metavar="{inputs,outputs,purge}", required=True)
    for kind, (short, long) in _KINDS.items():
        p = kinds.add_parser(
            kind, help=short, description=long, epilog=_EPILOG, formatter_class=Formatter
        )
        p.set_defaults(func=run, check=check_flags, submit_parser=p)
        _add_kind_flags(p, kind)


def _add_kind_flags(p: argparse.ArgumentParser, kind: str) -> None:
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
        "--quiet",
        action="store_true",
        help="with --wait: no progress bars (drawn only when stderr is a terminal anyway)",
    )
    p.add_argument(
        "--timeout",
        metavar="S",
        type=float,
        default=600.0,
        help="with --wait: give up after S seconds, exit 3 (default: 600)",
    )


def check_flags(args: argparse.Namespace) -> None:
    """The flags a message needs when it is not read from ``--file`` (a usage error, exit 2)."""
    if args.file is not None:
        return
    parser: argparse.ArgumentParser = args.submit_parser
    if args.kind != "purge" and not args.execution:
        parser.error("--execution is required (or give the whole message with --file)")
    if not args.project:
        parser.error("--project is required (or give the whole message with --file)")


def _parse_input(text: str) -> tuple[str, list[str]]:
    name, sep, urls = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=URL[,URL...], got {text!r}")
    return name, [u for u in urls.split(",") if u]


# ============================================================================ the message


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


# ============================================================================ waiting


class Waiter:
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
    waiter: Waiter,
    result: Any,
    timeout_s: float,
    out: TextIO,
    bars: Bars | None = None,
    recheck: Callable[[], None] | None = None,
) -> int:
    """Print the message's events until its terminal one; exit code 0, 1 or 3 (timeout).

    With ``bars``, ``haul.transfer.progress`` events move bars instead of printing lines.
    ``recheck`` runs about once a second while no outcome is seen (the delivery check).
    """
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
                if bars is not None and _to_bars(bars, event):
                    continue
                out.write(format_event(event) + "\n")
                out.flush()
                waiter.see(event)
        if waiter.outcome is not None:
            return waiter.outcome
        if recheck is not None:
            recheck()
        # Events are published before the task returns; once it has returned and a final read
        # showed nothing terminal, judge by the task's own result.
        if finished_seen:
            return _judge_result(result, out)
        finished_seen = bool(result.ready()) if result is not None else False


def _to_bars(bars: Bars, event: dict[str, Any]) -> bool:
    """Progress moves a bar (no line); a finished input completes its bar and prints."""
    if bars.feed_event(event):
        return True
    data = event.get("data") or {}
    if event.get("type") == EV_INPUT_DOWNLOADED:
        bars.finished(str(data.get("path")), int(data.get("size") or 0))
    return False


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


# ============================================================================ the command


def run(args: argparse.Namespace, settings: Settings) -> int:
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
        err(f"cannot read the message: {exc}")
        return EXIT_USAGE

    queue = args.queue or TASK_QUEUES[task]
    client = redis_client(settings)
    # Celery would retry a dead broker for 20 s and end in a RuntimeError: ask once first.
    client.ping()
    after = last_stream_id(client, settings.events_stream) if args.wait else "0-0"
    app = celery_client(settings)
    result = send(app, task, message, queue)
    print(result.id)
    sys.stdout.flush()
    if not args.wait:
        return EXIT_OK
    waiter = Waiter(task, message)
    stream = settings.events_stream
    recheck = _delivery_recheck(settings, app, Sent(task, result.id, queue, message))
    if not wanted(sys.stderr, args.quiet):
        return wait_for(
            client, stream, after, waiter, result, args.timeout, sys.stdout, recheck=recheck
        )
    # sys.stdout is read inside the block: rich redirects it there, so lines print above bars.
    with Bars(sys.stderr) as bars:
        return wait_for(
            client, stream, after, waiter, result, args.timeout, sys.stdout, bars, recheck
        )


def _delivery_recheck(settings: Settings, app: Any, sent: Sent) -> Callable[[], None] | None:
    """On a Redis broker: send the message again (same task id) if it is found nowhere, which
    happens when a worker's main process dies in kombu's BRPOP window (worker/delivery.py)."""
    from redis import Redis
    from redis.exceptions import RedisError

    from tasks.config import is_amqp

    if is_amqp(settings.effective_broker_url):
        return None
    check = DeliveryCheck(
        Redis.from_url(settings.effective_broker_url, socket_connect_timeout=5),
        Redis.from_url(settings.redis_url, socket_connect_timeout=5),
    )

    def resend(s: Sent) -> None:
        send(app, s.task, s.message, s.queue, task_id=s.task_id)
        print(f"haul: task {s.task_id} was found nowhere on the broker; sent again",
              file=sys.stderr)  # fmt: skip

    def recheck() -> None:
        # Redis away for a moment: the next look decides
        with contextlib.suppress(RedisError):
            check.resend_if_lost(sent, resend)

    return recheck
