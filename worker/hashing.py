"""The three digests haul records for every file.

They are computed by :class:`worker.transfer.sink.HashWriteSink` while the bytes stream (md5
on one thread, sha1 and sha256 on another: hashlib releases the GIL on large buffers, so the
cost is that of the slowest hash, not the sum), and for a local file by
:func:`worker.transfer.sink.hash_path`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Digests:
    md5: str
    sha1: str
    sha256: str
    size: int
    #: CRC32C (unsigned), computed only to check an object whose server states no md5 but a
    #: crc32c (a GCS composite object); never recorded
    crc32c: int | None = field(default=None, compare=False)

    def as_dict(self) -> dict[str, str]:
        return {"md5": self.md5, "sha1": self.sha1, "sha256": self.sha256}


class Crc32c:
    """A running CRC32C (google-crc32c, which google-cloud-storage brings; C, ~GB/s).

    Its C function takes ``bytes`` only (no memoryview or bytearray), so each piece is copied
    once: a memcpy, for the rare objects that are checked this way.
    """

    def __init__(self) -> None:
        import google_crc32c

        self._extend = google_crc32c.extend
        self.value = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self.value = self._extend(self.value, bytes(data))


def digest_bytes(data: bytes | bytearray | memoryview, *, crc32c: bool = False) -> Digests:
    """The three digests of bytes already in memory (small objects, hashed on one thread);
    ``crc32c`` adds that checksum too (see :attr:`Digests.crc32c`)."""
    crc: int | None = None
    if crc32c:
        running = Crc32c()
        running.update(data)
        crc = running.value
    return Digests(
        hashlib.md5(data).hexdigest(),  # noqa: S324 (a content checksum, not security)
        hashlib.sha1(data).hexdigest(),  # noqa: S324
        hashlib.sha256(data).hexdigest(),
        len(data),
        crc,
    )
