"""The three digests haul records for every file.

They are computed by :class:`worker.transfer.sink.HashWriteSink` while the bytes stream (md5
on one thread, sha1 and sha256 on another: hashlib releases the GIL on large buffers, so the
cost is that of the slowest hash, not the sum), and for a local file by
:func:`worker.transfer.sink.hash_path`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Digests:
    md5: str
    sha1: str
    sha256: str
    size: int

    def as_dict(self) -> dict[str, str]:
        return {"md5": self.md5, "sha1": self.sha1, "sha256": self.sha256}


def digest_bytes(data: bytes | bytearray | memoryview) -> Digests:
    """The three digests of bytes already in memory (small objects, hashed on one thread)."""
    return Digests(
        hashlib.md5(data).hexdigest(),  # noqa: S324 (a content checksum, not security)
        hashlib.sha1(data).hexdigest(),  # noqa: S324
        hashlib.sha256(data).hexdigest(),
        len(data),
    )
