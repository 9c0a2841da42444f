"""prometheus_client's multiprocess mode for the prefork pool.

Each pool process writes its samples to memory-mapped files in one folder; the main process
reads them all when ``/metrics`` is asked. The folder is per worker (its main pid), so two
workers sharing a data_dir never read each other's files, and it starts empty. ``haul worker``
with watches makes the folder itself (its own pid) and hands it to both of its Celery workers
through ``PROMETHEUS_MULTIPROC_DIR``: the watch worker writes there too, and the main worker
serves both (``Settings.metrics_dir_given``).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Final

from worker.settings import METRICS_DIR_ENV

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

ENV: Final = METRICS_DIR_ENV
_PID_IN_NAME = re.compile(r"_(\d+)\.db$")


def folder_for(data_dir: Path, pid: int) -> Path:
    return data_dir / "run" / f"metrics-{pid}"


def prepare(data_dir: Path) -> Path:
    """Make this worker's empty folder (the caller points prometheus_client at it).

    Folders of workers that no longer run are removed on the way.
    """
    pid = os.getpid()
    path = folder_for(data_dir, pid)
    for old in path.parent.glob("metrics-*"):
        other = old.name.removeprefix("metrics-")
        if old != path and other.isdigit() and not _alive(int(other)):
            shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def registry(path: Path) -> CollectorRegistry:
    """A registry that reads every process's files (what the main process exposes)."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    reg = CollectorRegistry()
    MultiProcessCollector(reg, path=str(path))  # type: ignore[no-untyped-call]
    return reg


def process_exited(pid: int, path: Path) -> None:
    """Drop a gone process's live gauges (its counters stay: totals never go down)."""
    from prometheus_client.multiprocess import mark_process_dead

    mark_process_dead(pid, str(path))  # type: ignore[no-untyped-call]


def sweep(path: Path) -> list[int]:
    """Mark every process that wrote here and no longer runs (a child killed with -9)."""
    gone = set()
    for db in path.glob("gauge_live*.db"):
        m = _PID_IN_NAME.search(db.name)
        if m and not _alive(int(m.group(1))):
            gone.add(int(m.group(1)))
    for pid in gone:
        process_exited(pid, path)
    return sorted(gone)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
