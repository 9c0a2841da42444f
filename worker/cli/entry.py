"""``haul``'s entry point: parse, read the settings once, run the subcommand, map its end.

Nothing below reads the environment again: each subcommand gets the settings object, and
``args.environ`` (read here once) is what the processes a subcommand starts inherit.

:func:`run` is the console script. A subcommand whose parser sets ``quick_exit`` (``haul
fetch``) ends its process without the interpreter's teardown once it has returned and its
output is flushed: freeing every module and object of a 2000-file fetch took 45-60 ms, a
fifth of the command's fixed cost. Such a subcommand leaves no thread running and no
``atexit`` work behind (its pools are closed before it returns).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Callable
from typing import NoReturn

from worker.cli.client import shown_redis
from worker.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Handler, err
from worker.cli.parser import build_parser
from worker.errors import ConfigError, HaulError


def run() -> NoReturn:
    """The ``haul`` command: :func:`main` on the process's own arguments, then exit."""
    args = build_parser().parse_args()
    code = _main(args)
    if getattr(args, "quick_exit", False):
        exit_now(code)
    sys.exit(code)


def exit_now(code: int) -> NoReturn:
    """End the process at once: logs and standard streams flushed, no interpreter teardown."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        # A closed pipe: nobody reads what is left.
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    return _main(build_parser().parse_args(argv))


def _main(args: argparse.Namespace) -> int:
    func: Handler | None = getattr(args, "func", None)
    if func is None:
        build_parser().print_help()
        return EXIT_USAGE
    check: Callable[[argparse.Namespace], None] | None = getattr(args, "check", None)
    if check is not None:
        check(args)

    from worker.settings import CONFIG_ENV, load_settings, read_environment

    environ = read_environment()
    if args.config:
        # Also what `haul worker` and the demo's worker read: they are other processes.
        environ[CONFIG_ENV] = args.config
    args.environ = environ
    try:
        settings = load_settings(environ)
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
        err(str(exc))
        return EXIT_FAILED
    except Exception as exc:
        if not _is_broker_error(exc):
            raise
        err(f"cannot use Redis at {shown_redis(settings)}: {exc}")
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
