"""``haul web``: the one entry point the worker's CLI calls."""

from __future__ import annotations

import argparse
import sys

from worker.settings import Settings


def run_web(settings: Settings, argv: list[str] | None = None) -> int:
    """Run the dashboard until interrupted; 2 for a bad setting (named), like the worker."""
    parser = argparse.ArgumentParser(prog="haul web")
    parser.add_argument("--bind", metavar="HOST:PORT", help="default: web_bind from the settings")
    args = parser.parse_args(argv or [])

    from dashboard.auth import check_bind

    bind = args.bind or settings.web_bind
    try:
        check_bind(bind, settings.web_token)  # before the heavy imports: refuse at once
    except ValueError as exc:
        print(f"haul web: {exc}", file=sys.stderr)
        return 2

    from dashboard.server import build
    from worker.logs import configure_logging

    # The worker's one structlog pipeline (log_format json or console, redaction; uvicorn's
    # records propagate to it: log_config=None), not a stdlib format of its own.
    configure_logging(settings.log_format, settings.log_level)
    server = build(settings, bind)
    shown = f"[{server.host}]" if ":" in server.host else server.host
    print(f"haul web: serving http://{shown}:{server.port}/", file=sys.stderr, flush=True)
    server.serve()
    return 0
