"""The ``haul`` argument parser: the top level and the list of subcommands.

A subcommand is a ``register(sub)`` function that adds its parser to ``sub`` and sets
``func`` (and optionally ``check``, a flag check run before the settings are read). To add
one, write its module under ``worker/cli/`` and add its ``register`` to :data:`SUBCOMMANDS`;
the order there is the order of ``haul --help``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from worker.cli import commands, events, submit
from worker.cli.common import Formatter, Subparsers

SUBCOMMANDS: tuple[Callable[[Subparsers[argparse.ArgumentParser]], None], ...] = (
    commands.register_worker,
    submit.register,
    events.register,
    commands.register_hash,
    commands.register_fetch,
    commands.register_reindex,
    commands.register_config,
    commands.register_demo,
    commands.register_web,
)

_EPILOG = """\
examples:
  haul demo                                   run the whole job once on a local sample dataset
  haul worker                                 start a worker on the haul queues
  haul submit inputs --execution exec-1 --project proj-42 \\
      --input dataset=https://example.com/train-labels.gz --wait
  haul events --follow                        watch what the workers do
  haul hash data/*.gz                         md5, sha1 and sha256, in haul.log's shape
  haul web                                    the dashboard on http://127.0.0.1:8750/

Settings come from the TOML file in $HAUL_CONFIG (or --config) and HAUL_* environment
variables; `haul config` shows what is in effect. Exit codes: 0 ok, 1 failed,
2 bad usage, configuration or message, 3 timed out.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="haul",
        description="haul moves the data of ML executions: it downloads and hashes inputs "
        "before an execution starts, stores its outputs as content-addressed datums after it "
        "ends, and publishes every step as an event. It runs as Celery workers on Redis.",
        epilog=_EPILOG,
        formatter_class=Formatter,
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="settings file (TOML); default: $HAUL_CONFIG, else the embedded defaults",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in SUBCOMMANDS:
        register(sub)
    return parser
