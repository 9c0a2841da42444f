"""``haul worker`` with watches: two Celery workers side by side, stopped together.

Watch rounds mostly wait on inotify, so ``haul.watch`` gets a Celery worker of its own with a
threads pool of ``watch_concurrency`` (no extra processes), and the other queues keep the
prefork pool of ``worker_concurrency``: watches never take a slot from inputs or outputs.
The watch worker runs with ``metrics_bind`` empty: the main worker's ``/metrics`` and
``/healthz`` stay the one endpoint (both workers reach the same broker and Redis). Its counts
are in it all the same: this process makes the multiprocess metrics folder and hands it to
both workers (``PROMETHEUS_MULTIPROC_DIR``), so the files a watch stores live and its rounds'
task series are served beside the pool's, and removes it when both have ended.

SIGTERM, SIGINT and SIGQUIT are passed to both; when one worker ends, the other is stopped
(SIGTERM: its soft shutdown, then requeue) and the exit code is the first non-zero one.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from worker.settings import Settings

_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)


def run_together(commands: list[tuple[list[str], dict[str, str]]]) -> int:
    """Run every (argv, environment) at once; the first non-zero exit code (or 0)."""
    procs = [subprocess.Popen(cmd, env=env) for cmd, env in commands]

    def forward(signum: int, _frame: FrameType | None) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in _FORWARDED}
    try:
        first = _wait_any(procs)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        codes = [p.wait() for p in procs]
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return next((c for c in [first, *codes] if c), 0)


def _wait_any(procs: list[subprocess.Popen[bytes]]) -> int:
    while True:
        for p in procs:
            code = p.poll()
            if code is not None:
                return code
        try:
            procs[0].wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            continue


def celery_worker(queues: str, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "tasks", "worker", "-Q", queues, *extra]


@contextmanager
def shared_metrics_dir(settings: Settings) -> Iterator[dict[str, str]]:
    """The environment that points both workers at one metrics folder, made for the block
    and removed after it (nothing when metrics are off or the folder was given already)."""
    if not settings.metrics_bind or settings.metrics_dir_given is not None:
        yield {}
        return
    from worker.observability import multiproc

    folder = multiproc.prepare(settings.data_dir)
    try:
        yield {multiproc.ENV: str(folder)}
    finally:
        multiproc.remove(folder)
