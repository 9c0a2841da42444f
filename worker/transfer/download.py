"""Download one object to a local file, hashing md5, sha1 and sha256 as the bytes arrive.

The bytes go to ``<dest>.haul-part`` beside the target and are renamed to ``dest`` only once
complete and verified (size, and the server's checksum where one is trustworthy), so a file at
its final name never holds anything but its final bytes.

Objects above ``multipart_threshold_bytes`` are fetched as parallel ranged chunks
(:mod:`worker.transfer.chunked`); smaller ones in one request, hashed inline. Every read is pinned
to the version of the first stat; a :class:`~worker.errors.Changed` starts the object over from a
fresh stat (at most ``max_attempts`` times), never mixing two versions. Every retry, of a
request or of the whole object, is the retry policy's (:mod:`worker.retry`).

Resume: a chunked download keeps ``<dest>.haul-part.json`` (:mod:`worker.transfer.resume`). A
process killed mid-download leaves both files; the next call with the same version token hashes
the finished chunks from disk once and fetches only the missing ones. A download that fails for
good (an error that is not retried, or retries exhausted) removes both.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar, runtime_checkable

from worker.constants import PART_RECORD_SUFFIX, PART_SUFFIX
from worker.errors import (
    Changed,
    DestinationError,
    DiskFullError,
    HaulError,
    IntegrityError,
    Interrupted,
)
from worker.hashing import Digests, digest_bytes
from worker.observability import metrics
from worker.retry import Allowance, store_type_of
from worker.stores.base import ObjectInfo, ObjectSource, StreamContext
from worker.transfer.buffers import BufferPool
from worker.transfer.chunked import ChunkedDownload, RangeReader, fetch_range
from worker.transfer.config import TransferConfig
from worker.transfer.place import write_whole
from worker.transfer.progress import ProgressFn, ProgressMeter
from worker.transfer.resume import PartRecord, drop_record
from worker.transfer.sink import HashWriteSink, Piece, open_direct

if TYPE_CHECKING:
    from worker.transfer.cache import Cache

log = logging.getLogger(__name__)
T = TypeVar("T")

#: chunks written between two saves of the resume record
_RECORD_EVERY = 4
#: piece size when one stream of unknown or unranged length is hashed on threads
# A small object is read whole into one buffer; anything larger streams through a few pieces,
# so files_in_flight downloads of up-to-threshold objects stay within the memory bound.
SMALL_MAX = 1024 * 1024
_STREAM_PIECE = 1024 * 1024


@dataclass(frozen=True)
class Downloaded:
    digests: Digests
    info: ObjectInfo
    seconds: float
    cached: bool = False
    #: bytes that were already on disk from an interrupted earlier attempt
    resumed_bytes: int = 0


@runtime_checkable
class FirstRangeReader(Protocol):
    """A source that can describe an object and open its first bytes in one request."""

    def read_first(self, key: str, length: int) -> tuple[ObjectInfo, StreamContext]: ...


def part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + PART_SUFFIX)


def part_record_path(dest: Path) -> Path:
    return dest.with_name(dest.name + PART_RECORD_SUFFIX)


def drop_leftovers(dest: Path) -> None:
    """Remove a part file and resume record an interrupted larger download left at ``dest``.

    Checked with ``lstat`` first: that takes no lock on the folder, an ``unlink`` of a missing
    name does, and thousands of small files go through here.
    """
    part, record = part_path(dest), part_record_path(dest)
    if os.path.lexists(part):
        part.unlink(missing_ok=True)
    if os.path.lexists(record):
        drop_record(record)


def source_id(source: ObjectSource, key: str) -> str:
    """What identifies an object across executions (cache key); never with credentials."""
    return f"{source.name}|{source.uri(key)}"


def needs_crc32c(info: ObjectInfo) -> bool:
    """The server states a crc32c but no md5 (a GCS composite object): the crc32c is checked."""
    return not info.md5 and info.crc32c is not None


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
    if needs_crc32c(info) and digests.crc32c is not None and digests.crc32c != info.crc32c:
        raise IntegrityError(
            f"{label}: crc32c {digests.crc32c:08x} differs from the server's checksum "
            f"{info.crc32c:08x}"
        )


class _Restart(HaulError):
    """The object has to start over from a fresh stat (it changed, or failed verification).

    Only the restart loop of :func:`download` retries it; it is raised as its ``cause``.
    """

    retryable = True

    def __init__(self, cause: HaulError) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.code = cause.code


def _create_part(path: Path, mode: int = os.O_WRONLY) -> int:
    """A new, empty part file; never follows a symlink someone left at its name."""
    path.unlink(missing_ok=True)
    return os.open(path, mode | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)


def _preallocate(fd: int, size: int) -> None:
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(f"no space left for {size} bytes of inputs") from None
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
        os.ftruncate(fd, size)


@dataclass
class _Job:
    source: ObjectSource
    key: str
    dest: Path
    cfg: TransferConfig
    label: str
    progress: ProgressFn | None
    cache: Cache | None
    gate: AbstractContextManager[object] | None
    cancel: threading.Event | None = None

    @property
    def tmp(self) -> Path:
        return part_path(self.dest)

    @property
    def record_path(self) -> Path:
        return part_record_path(self.dest)

    def cleanup(self) -> None:
        self.tmp.unlink(missing_ok=True)
        drop_record(self.record_path)

    def _retrying(self, fn: Callable[[], T], what: str) -> T:
        return self.cfg.policy.call(
            fn, store_type=store_type_of(self.source), what=f"{self.label}: {what}"
        )

    # ------------------------------------------------------------------ one attempt
    def attempt(self, info: ObjectInfo | None, started: float) -> Downloaded:
        first: StreamContext | None = None
        record = None
        if self.record_path.exists() and self.tmp.exists():
            record = PartRecord.load(self.record_path)
        if info is None:
            source = self.source
            if self.cache is None and record is None and isinstance(source, FirstRangeReader):
                info, first = self._retrying(
                    lambda: source.read_first(self.key, self.cfg.chunk_size_bytes), "first range"
                )
            else:
                info = self._retrying(lambda: source.stat(self.key), "stat")
        try:
            if self.cache is not None:
                hit = self.cache.lookup(source_id(self.source, self.key), info)
                if hit is not None and hit.link_to(self.dest):
                    log.info("%s: reused from the cache (%s)", self.label, info.version)
                    return Downloaded(hit.digests, info, time.monotonic() - started, cached=True)
            meter = ProgressMeter(
                self.label,
                info.size if info.size >= 0 else None,
                self.progress,
                self.cfg.progress_interval_s,
                cancel=self.cancel,
            )
            # A first range already read holds chunk 0: the rest must then come as chunks.
            limit = self.cfg.chunk_size_bytes if first else self.cfg.multipart_threshold_bytes
            chunked = info.ranges and info.size > limit
            body: bytearray | None = None
            resumed = 0
            if chunked:
                gate = self.gate or contextlib.nullcontext()
                with gate:
                    digests, resumed = self._chunked(info, first, record, meter)
                    first = None
            elif 0 <= info.size <= SMALL_MAX:
                drop_leftovers(self.dest)
                body, first = self._small(info, first, meter), None
                digests = digest_bytes(body, crc32c=needs_crc32c(info))
            else:
                drop_leftovers(self.dest)
                digests, first = self._stream(info, first, meter), None
        finally:
            if first is not None:
                first.stream.close()
        meter.finish_report()
        try:
            verify(info, digests, self.label)
        except IntegrityError as exc:
            metrics.checksum_mismatch(store_type_of(self.source))
            raise _Restart(exc) from None
        if body is not None:
            write_whole(self.dest, body)  # all at once: no part file for a small object
        else:
            try:
                os.replace(self.tmp, self.dest)
            except OSError as exc:
                raise DestinationError(f"cannot write {self.dest}: {exc.strerror or exc}") from None
            drop_record(self.record_path)
        if self.cache is not None:
            self.cache.store(source_id(self.source, self.key), info, self.dest, digests)
        return Downloaded(digests, info, time.monotonic() - started, resumed_bytes=resumed)

    # ------------------------------------------------------------------ one stream
    def _small(
        self, info: ObjectInfo, first: StreamContext | None, meter: ProgressMeter
    ) -> bytearray:
        """The whole object, read into memory (it is placed once verified)."""
        buf = bytearray(info.size)
        view = memoryview(buf)
        if info.size > 0 or first is None:
            if first is None and info.ranges and info.size > 0:
                source: RangeReader = self.source
            else:
                # No ranges (or an empty object): the whole body, with the same retries.
                source = _WholeBody(self.source)
            fetch_range(
                source,
                info,
                0,
                view,
                self.cfg,
                allowance=Allowance(self.cfg.max_attempts),
                meter=meter,
                label=self.label,
                cancel=threading.Event(),
                first=None if source is self.source else first,
            )
        elif first is not None:
            first.stream.close()
        return buf

    def _stream(
        self, info: ObjectInfo, first: StreamContext | None, meter: ProgressMeter
    ) -> Digests:
        """A large body in one stream (the server ignores ranges, or states no size)."""
        fd = _create_part(self.tmp)
        try:
            return self._stream_into(fd, info, first, meter)
        finally:
            os.close(fd)

    def _stream_into(
        self, fd: int, info: ObjectInfo, first: StreamContext | None, meter: ProgressMeter
    ) -> Digests:
        pool = BufferPool(4, _STREAM_PIECE)
        sink = HashWriteSink(
            fd, threads=True, free=lambda p: pool.release(p.buffer), crc32c=needs_crc32c(info)
        )
        ctx = first or self.source.read(self.key, pin=info)
        offset = 0
        index = 0
        try:
            with ctx as body:
                while True:
                    buf = pool.acquire(index)
                    view = memoryview(buf)
                    n = _fill(body, view)
                    if n == 0:
                        pool.release(buf)
                        break
                    meter.add(n)
                    sink.feed(Piece(index, offset, view[:n], buf))
                    offset += n
                    index += 1
            return sink.finish()
        except HaulError as exc:
            sink.close()
            if exc.retryable and not isinstance(exc, Changed):
                raise _Restart(exc) from None
            raise
        finally:
            sink.close()

    # ------------------------------------------------------------------ chunks
    def _chunked(
        self,
        info: ObjectInfo,
        first: StreamContext | None,
        record: PartRecord | None,
        meter: ProgressMeter,
    ) -> tuple[Digests, int]:
        chunk = self.cfg.chunk_size_bytes
        done: set[int] = set()
        if (
            record is not None
            and record.matches(info.version, info.size, chunk)
            and self.tmp.stat().st_size == info.size
        ):
            done = set(record.done)
            fd = os.open(self.tmp, os.O_RDWR | os.O_NOFOLLOW)
        else:
            self.cleanup()
            record = None
            fd = _create_part(self.tmp, os.O_RDWR)
            try:
                _preallocate(fd, info.size)
            except BaseException:
                os.close(fd)
                raise
            if info.version is not None:
                record = PartRecord(self.record_path, info.version, info.size, chunk)
        resumed = sum(min(chunk, info.size - i * chunk) for i in done)
        if resumed:
            log.info("%s: resuming, %d bytes already on disk", self.label, resumed)
            meter.reset(resumed)
        written = _RecordKeeper(record) if record is not None else None
        direct_fd = open_direct(self.tmp)
        try:
            job = ChunkedDownload(
                self.source,
                info,
                fd,
                self.cfg,
                meter=meter,
                label=self.label,
                done=done,
                first=first,
                written=written,
                direct_fd=direct_fd,
            )
            digests = job.run(crc32c=needs_crc32c(info)).finish()
        finally:
            os.close(fd)
            if direct_fd is not None:
                os.close(direct_fd)
        return digests, resumed


class _RecordKeeper:
    """Marks written chunks in the resume record; saves it every few chunks."""

    def __init__(self, record: PartRecord) -> None:
        self.record = record
        self._since = 0

    def __call__(self, piece: Piece) -> None:
        if not piece.write:
            return
        self.record.done.add(piece.index)
        self._since += 1
        if self._since >= _RECORD_EVERY:
            self._since = 0
            self.record.save()


class _WholeBody:
    """Presents unranged reads through ``read(start=0, length=...)`` for :func:`fetch_range`."""

    def __init__(self, source: ObjectSource) -> None:
        self._source = source
        #: retries count under the wrapped source's type
        self.store_type = store_type_of(source)

    def read(
        self, key: str, *, start: int = 0, length: int | None = None, pin: ObjectInfo | None = None
    ) -> StreamContext:
        return self._source.read(key, pin=pin)


def _fill(body: object, view: memoryview) -> int:
    readinto = body.readinto  # type: ignore[attr-defined]
    got = 0
    while got < len(view):
        n = int(readinto(view[got:]))
        if n == 0:
            break
        got += n
    return got


def download(
    source: ObjectSource,
    key: str,
    dest: Path,
    cfg: TransferConfig,
    *,
    info: ObjectInfo | None = None,
    label: str | None = None,
    progress: ProgressFn | None = None,
    cache: Cache | None = None,
    parallel_gate: AbstractContextManager[object] | None = None,
    cancel: threading.Event | None = None,
) -> Downloaded:
    """Fetch ``key`` from ``source`` into ``dest`` (complete or absent), with its three hashes.

    ``cache`` reuses content this worker already has (validated against ``info`` or a fresh
    stat); ``parallel_gate`` is entered around a chunked download, so a batch can keep one big
    object at a time while small ones run alongside. Setting ``cancel`` stops the transfer
    within one read with :class:`~worker.errors.Interrupted`, keeping the part file to resume.
    """
    started = time.monotonic()
    job = _Job(source, key, dest, cfg, label or str(dest), progress, cache, parallel_gate, cancel)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DestinationError(f"cannot make {dest.parent}: {exc.strerror or exc}") from None
    current: list[ObjectInfo | None] = [info]

    def attempt() -> Downloaded:
        try:
            return job.attempt(current[0], started)
        except (_Restart, Changed) as exc:
            # The object changed or arrived wrong: start it over from a fresh stat.
            job.cleanup()
            current[0] = None
            raise (exc if isinstance(exc, _Restart) else _Restart(exc)) from None
        except Interrupted:
            raise
        except Exception:
            job.cleanup()
            raise

    try:
        return cfg.policy.call(
            attempt,
            store_type=store_type_of(source),
            what=job.label,
            retry_if=lambda exc: isinstance(exc, _Restart),
            # An object restart is bounded by attempts only: a long download that meets a
            # replaced object at its end still gets its fresh start.
            budget_s=float("inf"),
            message="{what}: starting over (attempt {attempt})",
        )
    except _Restart as exc:
        raise exc.cause from None
