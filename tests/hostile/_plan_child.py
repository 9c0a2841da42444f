"""Plan one wildcard input in a fresh process and report its peak memory:
``python -m tests.hostile._plan_child STORE_ROOT DATA_DIR``.

Prints ``PLANNED <files> <rss before KiB> <peak rss KiB>``. Planning reads only the local
store; Redis is never contacted (its URL points nowhere on purpose).
"""

from __future__ import annotations

import resource
import sys

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
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    spec = InputSpec(name="x", urls=[f"file://{store_root}/data/**"], keep_directories="full")
    files, _ = plan_input(runtime, spec, "p")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"PLANNED {len(files)} {before} {peak}", flush=True)


if __name__ == "__main__":
    main()
