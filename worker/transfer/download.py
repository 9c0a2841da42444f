"""Download one object to a local file, hashing md5, sha1 and sha256 as the bytes arrive.

The bytes go to ``<dest>.haul-part`` beside the target and are renamed to ``dest`` only once
complete and verified (size, and the server's checksum where one is trustworthy), so a file at
its final name never holds anything but its final bytes.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from worker.constants import PART_RECORD_SUFFIX, PART_SUFFIX
from worker.errors import Changed, DiskFullError, IntegrityError
from worker.hashing import Digests, TripleHasher
from worker.stores.base import ObjectInfo, ObjectSource
from worker.transfer.config import TransferConfig
from worker.transfer.progress import ProgressFn, ProgressMeter
from worker.transfer.retry import retrying

log = logging.getLogger(__name__)
_BUFFER = 1024 * 1024


@dataclass(frozen=True)
class Downloaded:
    digests: Digests
    info: ObjectInfo
    seconds: float
    cached: bool = False


def part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + PART_SUFFIX)


def part_record_path(dest: Path) -> Path:
    return dest.with_name(dest.name + PART_RECORD_SUFFIX)


def verify(info: ObjectInfo, digests: Digests, label: str) -> None:
    """Compare what arrived with what the server promised; raise IntegrityError on a mismatch."""
    if info.size >= 0 and digests.size != info.size:
        raise IntegrityError(
            f"{label}: received {digests.size} bytes, the server announced {info.size}"
        )
    if info.md5 and info.md5 != digests.md5:
        raise IntegrityError(
            f"{label}: md5 {digests.md5} differs from the server's checksum {info.md5}"
        )


def _write_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        try:
            n = os.pwrite(fd, data, offset)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFullError("no space left on the device holding the inputs") from None
            raise
        data = data[n:]
        offset += n


def _stream_once(
    source: ObjectSource, info: ObjectInfo, tmp: Path, meter: ProgressMeter, label: str
) -> Digests:
    hasher = TripleHasher(threads=info.size > 64 * _BUFFER)
    buffer = bytearray(_BUFFER)
    view = memoryview(buffer)
    offset = 0
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        with source.read(info.key, pin=info) as body:
            while n := body.readinto(view):
                chunk = bytes(view[:n])
                hasher.update(chunk)
                _write_all(fd, memoryview(chunk), offset)
                offset += n
                meter.add(n)
        digests = hasher.digests()
    finally:
        hasher.close()
        os.close(fd)
    verify(info, digests, label)
    return digests


def download(
    source: ObjectSource,
    key: str,
    dest: Path,
    cfg: TransferConfig,
    *,
    info: ObjectInfo | None = None,
    label: str | None = None,
    progress: ProgressFn | None = None,
) -> Downloaded:
    """Fetch ``key`` from ``source`` into ``dest`` (complete or absent), with its three hashes."""
    started = time.monotonic()
    shown = label or str(dest)
    tmp = part_path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    current: list[ObjectInfo | None] = [info]

    def attempt() -> Downloaded:
        obj = current[0] or source.stat(key)
        current[0] = obj
        meter = ProgressMeter(
            shown, obj.size if obj.size >= 0 else None, progress, cfg.progress_interval_s
        )
        try:
            digests = _stream_once(source, obj, tmp, meter, shown)
        except Changed:
            current[0] = None  # the object was replaced: start over from a fresh stat
            raise
        os.replace(tmp, dest)
        return Downloaded(digests, obj, time.monotonic() - started)

    try:
        return retrying(
            attempt,
            attempts=cfg.max_attempts,
            base_s=cfg.backoff_base_s,
            max_s=cfg.backoff_max_s,
            on_retry=lambda exc, n: log.warning("retrying %s (attempt %d): %s", shown, n + 1, exc),
        )
    finally:
        tmp.unlink(missing_ok=True)
        part_record_path(dest).unlink(missing_ok=True)
