"""The small subcommands: ``worker``, ``hash``, ``fetch``, ``reindex``, ``config``, ``demo``,
``web``.

Each is a ``register_*`` function (its parser) and a ``run_*`` function. The work itself is
imported inside ``run_*`` (Celery, the transfer engine, the demo), so building the parser for
``haul --help`` imports none of it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from worker.cli.client import redis_client
from worker.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Formatter, Subparsers, err
from worker.constants import ALL_QUEUES, QUEUE_WATCH

if TYPE_CHECKING:
    from worker.settings import Settings

WORKER_QUEUES = ",".join(ALL_QUEUES)


# ============================================================================ haul worker


def register_worker(sub: Subparsers[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "worker",
        help="run a worker that takes messages from the queues (Celery)",
        description="Start a haul worker: `celery -A tasks worker` on the haul queues. SIGTERM "
        "lets running tasks finish for a while, then puts them back on the queue.",
        epilog="examples:\n  haul worker\n  haul worker --queues haul.inputs --concurrency 4\n",
        formatter_class=Formatter,
    )
    p.set_defaults(func=run_worker)
    p.add_argument(
        "--queues", default=WORKER_QUEUES, help=f"comma-separated queues (default: {WORKER_QUEUES})"
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


def run_worker(args: argparse.Namespace, settings: Settings) -> int:
    from worker.cli.supervise import celery_worker, run_together, shared_metrics_dir

    common = ["--loglevel", args.loglevel or settings.log_level]
    main = common + (["--concurrency", str(args.concurrency)] if args.concurrency else [])
    queues = [q for q in args.queues.split(",") if q]
    if QUEUE_WATCH in queues and len(queues) > 1:
        # Watches in a worker of their own (docs/data-model.md, "Own concurrency").
        name = args.hostname or "celery@%h"
        watch = [*common, "--pool", "threads", "--concurrency", str(settings.watch_concurrency)]
        others = ",".join(q for q in queues if q != QUEUE_WATCH)
        if args.hostname:
            main += ["--hostname", args.hostname]
        # One /metrics endpoint, the main worker's, serving one folder that both workers
        # write to (worker/cli/supervise.py says why).
        with shared_metrics_dir(settings) as metrics_env:
            main_env = {**args.environ, **metrics_env}
            watch_env = {**main_env, "HAUL_METRICS_BIND": ""}
            watch += ["--hostname", f"watch-{name}"]
            return run_together(
                [
                    (celery_worker(others, main), main_env),
                    (celery_worker(QUEUE_WATCH, watch), watch_env),
                ]
            )
    if args.hostname:
        main += ["--hostname", args.hostname]
    argv = celery_worker(args.queues, main)
    # SIGTERM handling (soft shutdown, then requeue) is set up by the app itself: tasks/app.py.
    sys.stdout.flush()
    sys.stderr.flush()
    # replaces this process (signals go to Celery), with the environment the entry point read
    os.execve(sys.executable, argv, args.environ)  # noqa: S606
    return EXIT_FAILED  # pragma: no cover


# ============================================================================ haul hash


def register_hash(sub: Subparsers[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "hash",
        help="print the md5, sha1 and sha256 of files, in haul.log's line shape",
        description="Hash local files in one read each and print the four haul.log lines "
        "(size, md5, sha1, sha256), to compare a file with what haul recorded.",
        epilog="example:\n  haul hash train-labels.gz train-images.gz\n",
        formatter_class=Formatter,
    )
    p.set_defaults(func=run_hash)
    p.add_argument("files", nargs="+", metavar="FILE")


def run_hash(args: argparse.Namespace, settings: Settings) -> int:
    from worker.records.haul_log import file_lines
    from worker.transfer.sink import hash_path

    status = EXIT_OK
    for name in args.files:
        path = Path(name)
        if not path.is_file():
            err(f"{name}: no such file" if not path.exists() else f"{name}: not a regular file")
            status = EXIT_FAILED
            continue
        try:
            digests = hash_path(path)
        except OSError as exc:
            err(f"{name}: cannot read: {exc.strerror or exc}")
            status = EXIT_FAILED
            continue
        for line in file_lines(name, digests):
            print(line)
    return status


# ============================================================================ haul fetch


def register_fetch(sub: Subparsers[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "fetch",
        help="download URLs to a folder with haul's transfer engine, without a queue",
        description="Download URLs into a local folder the way a worker would (hashes included), "
        "without Redis or a worker.",
        epilog="example:\n  haul fetch https://example.com/train-labels.gz --to ./data\n",
        formatter_class=Formatter,
    )
    p.set_defaults(func=run_fetch, quick_exit=True)
    p.add_argument("urls", nargs="+", metavar="URL")
    p.add_argument("--to", required=True, metavar="DIR", help="folder to download into")
    p.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bars (they are drawn only when stderr is a terminal anyway)",
    )


def run_fetch(args: argparse.Namespace, settings: Settings) -> int:
    from worker.cli.fetch import run_fetch as fetch
    from worker.cli.progress import Bars, wanted
    from worker.observability import metrics

    metrics.discard()  # nothing serves them here

    if not wanted(sys.stderr, args.quiet):
        code: int = fetch(list(args.urls), Path(args.to), settings, sys.stdout)
        return code
    with Bars(sys.stderr) as bars:
        return int(fetch(list(args.urls), Path(args.to), settings, sys.stdout, bars))


# ============================================================================ haul reindex


def register_reindex(sub: Subparsers[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "reindex",
        help="rebuild the Redis datum, alias and dataset indexes from a store's records",
        description="Read every datum record (<prefix>/datums/<project>/<id>.json), alias move "
        "(<prefix>/aliases/...) and sealed dataset version (<prefix>/datasets/...) kept in the "
        "store and load them into Redis, e.g. after losing the Redis data.",
        epilog="example:\n  haul reindex default\n",
        formatter_class=Formatter,
    )
    p.set_defaults(func=run_reindex)
    p.add_argument("store", metavar="STORE", help="a store name from the settings")


def run_reindex(args: argparse.Namespace, settings: Settings) -> int:
    from worker.records.reindex import reindex_store
    from worker.stores.registry import build_store

    stores = settings.all_stores()
    if args.store not in stores:
        err(f"unknown store {args.store!r} (declared: {', '.join(sorted(stores))})")
        return EXIT_USAGE
    store = build_store(
        args.store, stores[args.store], settings.store_secrets(args.store), settings
    )
    try:
        done = reindex_store(redis_client(settings), store)
    finally:
        store.close()
    print(f"reindexed {done.datums} datum record(s) from store {args.store!r} into Redis")
    print(
        f"reindexed {done.alias_moves} alias move(s) and {done.dataset_versions} dataset "
        f"version(s) from store {args.store!r} into Redis"
    )
    return EXIT_OK


# ============================================================================ haul config


def register_config(sub: Subparsers[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "config",
        help="check the settings and print them (without secrets)",
        description="Load and validate the settings exactly as a worker would and print them: "
        "every store (the embedded default too), the projects and the paths. Secrets are never "
        "printed. A bad value exits 2 with a message naming the key.",
        epilog="examples:\n  haul config\n  HAUL_CONFIG=/etc/haul/haul.toml haul config --json\n",
        formatter_class=Formatter,
    )
    p.set_defaults(func=run_config)
    p.add_argument("--json", action="store_true", help="print JSON")


def settings_view(settings: Settings) -> dict[str, Any]:
    """The settings as JSON, with every store (the embedded default too), without secrets."""
    from worker.settings import CAPTURED
    from worker.urls import redact_url

    view = settings.model_dump(mode="json", exclude={*CAPTURED, "stores"})
    view["redis_url"] = redact_url(settings.redis_url)
    view["stores"] = {
        name: cfg.model_dump(mode="json") for name, cfg in sorted(settings.all_stores().items())
    }
    return view


def _toml_line(key: str, value: Any) -> str:
    # TOML has no null: an unset key is shown as a comment, so the output stays a valid file.
    return f"# {key} is not set" if value is None else f"{key} = {json.dumps(value)}"


def run_config(args: argparse.Namespace, settings: Settings) -> int:
    view = settings_view(settings)
    if args.json:
        print(json.dumps(view, indent=2, sort_keys=True))
        return EXIT_OK
    source = settings.config_file or "(none: embedded defaults)"
    print(f"# settings are valid; config file: {source}; HAUL_* environment variables applied")
    stores = view.pop("stores")
    projects = view.pop("projects")
    for key in sorted(view):
        print(_toml_line(key, view[key]))
    for name, cfg in stores.items():
        note = "  # the embedded default" if name not in settings.stores else ""
        print(f"\n[stores.{name}]{note}")
        for key, value in cfg.items():
            print(_toml_line(key, value))
    for name, cfg in sorted(projects.items()):
        print(f"\n[projects.{name}]\nstore = {json.dumps(cfg['store'])}")
    print(f"\n# executions: {settings.executions_dir}")
    return EXIT_OK


# ============================================================================ haul demo


def register_demo(sub: Subparsers[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        help="run the whole job once on a generated sample dataset, and show what happens",
        description="Start (or reuse) Redis, a local HTTP server with a sample dataset and a "
        "worker; prepare the inputs of two executions with the dataset changed in between, "
        "store an output, show haul.log, the datum and the events, then stop everything.",
        epilog="example:\n  haul demo\n",
        formatter_class=Formatter,
    )
    p.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace, settings: Settings) -> int:
    from worker.cli.demo import main as demo_main

    # The entry point hands its environment down: the demo's worker inherits it.
    code: int = demo_main(settings, args.environ)
    return code


# ============================================================================ haul web


def register_web(sub: Subparsers[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "web",
        help="run the dashboard: executions, change warnings, datums, URL history",
        description="Serve the dashboard (contract section 10) on web_bind, fed by the events "
        "stream through the consumer group web_consumer_group into web_database_url.",
        epilog="examples:\n  haul web\n  HAUL_WEB_TOKEN=... haul web --bind 0.0.0.0:8750\n",
        formatter_class=Formatter,
    )
    p.set_defaults(func=run_web)
    p.add_argument("--bind", metavar="HOST:PORT", help="default: web_bind from the settings")


def run_web(args: argparse.Namespace, settings: Settings) -> int:
    from dashboard.cli import run_web as serve

    return serve(settings, ["--bind", args.bind] if args.bind else [])
