"""The machine's hashing ceiling: md5 on one thread, sha1 + sha256 on another, from memory.

Each thread hashes 1 GiB as 128 updates of one 8 MiB random buffer (hashlib releases the GIL on
large buffers, so the two threads run in parallel). Prints the elapsed seconds of the slower one.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import time

MiB = 1024 * 1024
BUFFER_BYTES = 8 * MiB
TOTAL_BYTES = 1024 * MiB


def _hash(names: tuple[str, ...], buf: bytes, barrier: threading.Barrier) -> None:
    hashes = [hashlib.new(n) for n in names]
    barrier.wait()
    for _ in range(TOTAL_BYTES // BUFFER_BYTES):
        for h in hashes:
            h.update(buf)
    for h in hashes:
        h.hexdigest()


def main() -> int:
    buf = os.urandom(BUFFER_BYTES)
    barrier = threading.Barrier(3)
    threads = [
        threading.Thread(target=_hash, args=(("md5",), buf, barrier)),
        threading.Thread(target=_hash, args=(("sha1", "sha256"), buf, barrier)),
    ]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    elapsed_s = time.perf_counter() - started
    print(f"seconds={elapsed_s:.6f} bytes={TOTAL_BYTES}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
