"""Plan one wildcard input in a fresh process and report its peak memory:
``python -m tests.hostile._plan_child STORE_ROOT DATA_DIR``.

Prints ``PLANNED <files> <rss before KiB> <peak rss KiB>``. Planning reads only the local
store; Redis is never contacted (its URL points nowhere on purpose). Peaks are ``VmHWM`` of
this process's own address space: ``ru_maxrss`` is carried over fork and exec on Linux, so in a
large pytest process it would start at the parent's size and hide the planner's growth.
"""

from __future__ import annotations

import sys
from pathlib import Path

from worker.models import InputSpec
from worker.pipeline.plan import plan_input
from worker.pipeline.runtime import Runtime
from worker.settings import load_settings


def main() -> None:
    store_root, data_dir = sys.argv[1:3]
    settings = load_settings(
        {
            "HAUL_DATA_DIR": data_dir,
            "HAUL_REDIS_URL": "redis://127.0.0.1:1/0",
            "HAUL_STORES__LAKE__TYPE": "local",
            "HAUL_STORES__LAKE__PATH": store_root,
        }
    )
    runtime = Runtime.from_settings(settings)
    before = _peak_rss_kib()
    spec = InputSpec(name="x", urls=[f"file://{store_root}/data/**"], keep_directories="full")
    files, _ = plan_input(runtime, spec, "p")
    peak = _peak_rss_kib()
    print(f"PLANNED {len(files)} {before} {peak}", flush=True)


def _peak_rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


if __name__ == "__main__":
    main()
