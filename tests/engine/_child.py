"""A download in a child process (resume and memory tests): ``python -m tests.engine._child``.

Arguments: URL DEST CHUNK_BYTES CONCURRENCY. Prints ``DONE <md5> <peak RSS KiB>`` at the end.

The peak is ``VmHWM`` of this process's own address space, not ``ru_maxrss``: Linux carries
``ru_maxrss`` over fork and exec, so a child of a large pytest process reported the parent's size.
"""

from __future__ import annotations

import sys
from pathlib import Path

from worker.stores.http import HttpSource
from worker.transfer.config import TransferConfig
from worker.transfer.download import download


def main() -> None:
    url, dest, chunk, concurrency = sys.argv[1:5]
    cfg = TransferConfig(
        chunk_size_bytes=int(chunk),
        concurrency=int(concurrency),
        multipart_threshold_bytes=int(chunk),
    )
    with HttpSource(allow_private=True) as source:
        got = download(source, url, Path(dest), cfg)
    print(f"DONE {got.digests.md5} {_peak_rss_kib()}", flush=True)


def _peak_rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


if __name__ == "__main__":
    main()
