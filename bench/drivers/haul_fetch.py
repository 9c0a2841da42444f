"""``haul fetch`` for the benchmark when the CLI is not there: ``run_fetch`` from python.

Usage: ``haul_fetch.py --to DIR [--list FILE] [--timing FILE] [URL ...]``. Settings come from the
environment exactly as for the CLI, and the run ends as ``haul fetch`` does (no metrics kept, the
process ended without the interpreter's teardown). When ``worker.cli.fetch`` does not exist, the
transfer engine is driven directly (``worker.transfer.download.download``, ``files_in_flight`` at
a time) so the harness can be built and debugged; the timing file then says ``mode=engine``.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any


def _engine_fetch(urls: list[str], to: Path, settings: Any) -> None:
    from worker.pipeline.runtime import Runtime
    from worker.transfer.download import download
    from worker.urls import parse_input_url

    runtime = Runtime.from_settings(settings)

    def one(url: str) -> str:
        source, key = runtime.source_for(parse_input_url(url))
        name = key.rsplit("/", 1)[-1]
        result = download(source, key, to / name, runtime.transfer)
        d = result.digests
        return f"{name} size={d.size} md5={d.md5} sha1={d.sha1} sha256={d.sha256}"

    try:
        with ThreadPoolExecutor(runtime.transfer.files_in_flight) as pool:
            for line in pool.map(one, urls):
                print(line)
    finally:
        runtime.close()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--to", type=Path, required=True)
    parser.add_argument("--list", type=Path)
    parser.add_argument("--timing", type=Path)
    parser.add_argument("urls", nargs="*")
    args = parser.parse_args()
    urls = list(args.urls)
    if args.list:
        urls += [u for u in args.list.read_text().split() if u]

    from worker.settings import load_settings

    settings = load_settings()
    started = time.perf_counter()
    try:
        from worker.cli.fetch import run_fetch
    except ImportError:
        mode = "engine"
        _engine_fetch(urls, args.to, settings)
        rc = 0
    else:
        from worker.observability import metrics

        mode = "run_fetch"
        metrics.discard()
        rc = run_fetch(urls, args.to, settings, sys.stdout) or 0
    elapsed_s = time.perf_counter() - started
    if args.timing:
        args.timing.write_text(f"mode={mode} seconds={elapsed_s:.6f}\n")
    return int(rc)


if __name__ == "__main__":
    code = main()
    try:
        from worker.cli.entry import exit_now
    except ImportError:
        sys.exit(code)
    exit_now(code)
