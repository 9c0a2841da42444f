"""A download in a child process (resume and memory tests): ``python -m tests.engine._child``.

Arguments: URL DEST CHUNK_BYTES CONCURRENCY. Prints ``DONE <md5> <maxrss KiB>`` at the end.
"""

from __future__ import annotations

import resource
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
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"DONE {got.digests.md5} {maxrss}", flush=True)


if __name__ == "__main__":
    main()
