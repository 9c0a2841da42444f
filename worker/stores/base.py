"""The interface every data store and byte source implements.

An :class:`ObjectSource` can describe and read objects (HTTP(S) URLs, and every store). A
:class:`Store` can also create objects without ever overwriting one, delete them, and keep small
JSON records (datum records) next to the data.

Keys are full keys inside the bucket / container / folder, the store's ``prefix`` included; the
HTTP source's key is the whole URL. Backends raise only exceptions from :mod:`worker.errors`:
each translates its SDK's errors at one boundary.

Reads are *pinned*: :meth:`ObjectSource.read` takes the :class:`ObjectInfo` from a first
:meth:`stat` and sends its version token with every range (If-Match on the ETag, a version id or
a generation), so an object replaced mid-download raises :class:`~worker.errors.Changed` instead
of mixing two versions.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self, runtime_checkable


@dataclass(frozen=True)
class ObjectInfo:
    """What a store says about one object version."""

    key: str
    size: int
    etag: str | None = None
    #: the token that pins ranged reads to this version (ETag, version id or generation)
    version: str | None = None
    last_modified: str | None = None  # ISO 8601, UTC
    #: hex md5 the server states and that is known to equal the content, else None
    md5: str | None = None
    #: crc32c (as an unsigned int) the server states for the whole content, else None
    crc32c: int | None = None
    #: which checksum the content can be checked against, or why there is none
    checksum_note: str = "none: the server states no content checksum"
    #: True when ranged reads are possible (HTTP servers may ignore Range)
    ranges: bool = True
    extra: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def shown_version(self) -> str | None:
        """The version events name: the store's version id where it keeps one (S3
        VersionId, Azure versionId; GCS's generation is already the pin), otherwise the
        pin token without an ETag's quotes (Azure pins with the quoted ETag)."""
        if self.extra.get("version_id"):
            return self.extra["version_id"]
        return self.version.strip('"') if self.version else None


class ByteStream(Protocol):
    """A body being read: ``readinto`` returns 0 at the end. Callers check the byte count."""

    def readinto(self, buffer: memoryview) -> int: ...

    def close(self) -> None: ...


class StreamContext:
    """Wraps a :class:`ByteStream` so it closes on every path (``with store.read(...)``)."""

    def __init__(self, stream: ByteStream) -> None:
        self.stream = stream

    def __enter__(self) -> ByteStream:
        return self.stream

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stream.close()


@runtime_checkable
class ObjectSource(Protocol):
    """Something haul can read objects from."""

    #: the configured store name, or a short label for ad-hoc sources ("http")
    name: str

    def stat(self, key: str) -> ObjectInfo:
        """Describe the current version of ``key``; raise NotFound when absent."""
        ...

    def read(
        self, key: str, *, start: int = 0, length: int | None = None, pin: ObjectInfo | None = None
    ) -> StreamContext:
        """Open ``length`` bytes from ``start`` (``None``: to the end), pinned to ``pin``."""
        ...

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, paginated lazily, in key order."""
        ...

    def uri(self, key: str) -> str:
        """The URL form of ``key`` (``s3://bucket/key``), never with credentials."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class SmallObject:
    """A whole small object, read in one request."""

    info: ObjectInfo
    body: bytes
    seconds: float


@dataclass(frozen=True)
class NotModified:
    """The object is still the version the caller holds (an HTTP ``304``): no body came.

    ``info`` describes that version as the answer did; its ``size`` is unknown (-1): the
    caller's copy knows it.
    """

    info: ObjectInfo
    seconds: float


#: ``deliver(index, got)``; ``got`` None: that key has to go the ordinary way
SmallDelivery = Callable[[int, SmallObject | NotModified | None], None]


@runtime_checkable
class SmallObjectReader(ObjectSource, Protocol):
    """A source that can fetch many small objects at once, whole, in one request each."""

    def fetch_small(
        self,
        keys: Sequence[str],
        limit: int,
        deliver: SmallDelivery,
        *,
        max_connections: int,
        stop: threading.Event | None = None,
        held: Callable[[int], str | None] | None = None,
    ) -> None:
        """``held(i)``, when given, is the version token (:attr:`ObjectInfo.version`) of a
        copy of ``keys[i]`` the caller already has, or None: the same request then asks for
        the body only if the object changed, and an unchanged one is delivered as
        :class:`NotModified`. It is called once per key, just before that key's request is
        built, so a batch's first requests do not wait for every copy to be looked up.
        """
        ...


@runtime_checkable
class Store(ObjectSource, Protocol):
    """A data store: also creates, deletes, and keeps JSON records."""

    #: the store's configured key prefix, without a trailing slash ("" for none)
    prefix: str

    def create(self, key: str, path: Path, *, size: int, md5: str | None = None) -> None:
        """Upload the file at ``path`` to ``key`` only if ``key`` does not exist.

        Uses the store's conditional create (If-None-Match: *, if_generation_match=0, ...).
        Raises AlreadyExists when the key is taken; never overwrites. ``md5`` (hex), when
        given, lets the server reject bytes that differ from the ones that were hashed.
        """
        ...

    def delete(self, key: str) -> bool:
        """Remove ``key`` (every version of it on versioned stores); False if it was absent."""
        ...

    def put_record(self, key: str, data: bytes) -> None:
        """Write a small JSON record, replacing an older one (records are not content)."""
        ...

    def get_record(self, key: str) -> bytes:
        """Read a small record; raise NotFound when absent."""
        ...


@runtime_checkable
class StagingStore(Protocol):
    """A store that can take a private copy of a file written while the file is hashed (a
    local folder): :meth:`Store.create` of that file then compares it with the copy instead
    of copying and hashing it again."""

    def stage(self, source: Path) -> int:
        """A new private file inside the store for ``source``'s bytes, open for writing."""
        ...

    def unstage(self, source: Path) -> None:
        """Forget (and remove) ``source``'s private copy, if it still has one."""
        ...


def join_key(*parts: str) -> str:
    """Join key parts with single slashes: no empty segment anywhere, so a configured prefix
    such as ``/haul//lake/`` gives ``haul/lake/...``, never a leading or a double slash."""
    return "/".join(seg for part in parts for seg in part.split("/") if seg)


class SourceBase:
    """Shared helpers for backends; ``with`` support and a no-op close."""

    name: str = ""

    def close(self) -> None:
        return None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
