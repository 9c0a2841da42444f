"""``haul events``: the events stream in readable lines (or raw JSON), optionally followed."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from worker.cli.client import read_events, recent_events, redis_client, shown_redis
from worker.cli.common import EXIT_OK, Formatter, Subparsers
from worker.cli.rendering import print_event

if TYPE_CHECKING:
    from worker.settings import Settings

_EPILOG = """\
examples:
  haul events                         the last 20 events, one readable line each
  haul events --follow --execution exec-1
  haul events --type inputs.failed --count 5
  haul events --json --count 100 > events.jsonl     CloudEvents 1.0, one JSON object a line

A readable line is `HH:MM:SS type subject: summary` (local time; subject is the execution).
"""


def register(sub: Subparsers[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "events",
        help="show the events stream in readable lines (or raw JSON)",
        description="Show the newest events of the haul events stream (a Redis Stream of "
        "CloudEvents), oldest first, and with --follow keep showing new ones.",
        epilog=_EPILOG,
        formatter_class=Formatter,
    )
    p.set_defaults(func=run)
    p.add_argument("--follow", "-f", action="store_true", help="keep waiting for new events")
    p.add_argument("--json", action="store_true", help="print each event as one JSON line")
    p.add_argument("--execution", metavar="ID", help="only the events of this execution")
    p.add_argument(
        "--type", metavar="PREFIX", help="only events whose type starts with this, e.g. inputs."
    )
    p.add_argument(
        "--count", "-n", type=int, default=20, metavar="N", help="how many to show (default 20)"
    )


def matches(event: dict[str, Any], execution: str | None, type_prefix: str | None) -> bool:
    if execution is not None:
        data = event.get("data") or {}
        if event.get("subject") != execution and data.get("execution_id") != execution:
            return False
    if type_prefix:
        prefix = type_prefix if type_prefix.startswith("haul.") else f"haul.{type_prefix}"
        if not str(event.get("type", "")).startswith(prefix):
            return False
    return True


def run(args: argparse.Namespace, settings: Settings) -> int:
    client = redis_client(settings)
    stream = settings.events_stream

    def keep(ev: dict[str, Any]) -> bool:
        return matches(ev, args.execution, args.type)

    cursor, events = recent_events(client, stream, args.count, keep)
    for event in events:
        print_event(event, args.json, sys.stdout)
    if not args.follow:
        if not events and not args.json:
            print(f"(no events on stream {stream!r} at {shown_redis(settings)})", file=sys.stderr)
        return EXIT_OK
    try:
        while True:
            cursor, new = read_events(client, stream, cursor, block_ms=5000)
            for event in new:
                if keep(event):
                    print_event(event, args.json, sys.stdout)
    except KeyboardInterrupt:
        return EXIT_OK
