"""A folder as a data store: the embedded default, and how a mounted share (NFS, SMB) is used.

Conditional create is an exclusive hard link: the bytes are copied to a private temporary file
inside the store (same file system), flushed, then ``os.link``-ed to the key, which fails if the
key exists. An output (``store_outputs``) is written to that private file while it is hashed
(:meth:`LocalStore.stage`); ``create`` then compares the file with it byte for byte instead of
copying it again with a second md5. Readers therefore never see a partial object at a key,
and nothing is overwritten. Where the share does not support hard links, ``O_EXCL`` creation
of a lock name plus an atomic rename is used instead.
"""

from __future__ import annotations

import errno
import hashlib
import os
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from worker.errors import (
    AccessDenied,
    AlreadyExists,
    Changed,
    DiskFullError,
    HaulError,
    NotFound,
    StoreError,
    UnsupportedURL,
)
from worker.paths import clean_relative
from worker.stores.base import ObjectInfo, SourceBase, StreamContext, join_key
from worker.stores.plugin import StoreConfigBase, StoreSecrets, StoreTuning, StoreType

if TYPE_CHECKING:
    from worker.urls import ParsedURL

TMP_DIR = ".haul-tmp"
_COPY_BUFFER = 8 * 1024 * 1024


def _translate(exc: OSError, key: str) -> HaulError:
    """The one place OS errors become haul errors."""
    if isinstance(exc, FileNotFoundError):
        return NotFound(f"no such object: {key}")
    if isinstance(exc, FileExistsError):
        return AlreadyExists(f"already exists: {key}")
    if isinstance(exc, PermissionError):
        return AccessDenied(f"permission denied: {key}")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(f"no space left writing {key}")
    return StoreError(f"{key}: {exc.strerror or exc}")


def _version(st: os.stat_result) -> str:
    return f"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"


class _FileBody:
    def __init__(self, fd: int, start: int, length: int | None) -> None:
        self._fd = fd
        self._pos = start
        self._left = length

    def readinto(self, buffer: memoryview) -> int:
        want = len(buffer) if self._left is None else min(len(buffer), self._left)
        if want <= 0:
            return 0
        n = os.preadv(self._fd, [buffer[:want]], self._pos)
        self._pos += n
        if self._left is not None:
            self._left -= n
        return n

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _copy(src_path: Path, tmp: Path) -> tuple[int, str]:
    """Copy ``src_path`` (never through a symlink) to the new file ``tmp``; (size, md5)."""
    md5 = hashlib.md5(usedforsecurity=False)
    copied = 0
    try:
        src = os.open(src_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise Changed(
                f"{src_path.name} was replaced by a symlink while it was stored"
            ) from None
        raise
    try:
        with tmp.open("xb") as dst:
            while chunk := os.read(src, _COPY_BUFFER):
                md5.update(chunk)
                dst.write(chunk)
                copied += len(chunk)
            dst.flush()
            os.fsync(dst.fileno())
    finally:
        os.close(src)
    return copied, md5.hexdigest()


def _same_bytes(src_path: Path, copy: Path, size: int) -> bool:
    """``src_path`` (never through a symlink) holds exactly ``size`` bytes equal to ``copy``."""
    try:
        src = os.open(src_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return False  # replaced by a symlink
        raise
    try:
        if os.fstat(src).st_size != size:
            return False
        with copy.open("rb") as other:
            while chunk := os.read(src, _COPY_BUFFER):
                if other.read(len(chunk)) != chunk:
                    return False
            return other.read(1) == b""
    finally:
        os.close(src)


class LocalStore(SourceBase):
    def __init__(self, name: str, root: Path, prefix: str = "") -> None:
        self.name = name
        self.root = root
        self.prefix = prefix.strip("/")
        #: source file -> its private copy written while it was hashed (:meth:`stage`)
        self._staged: dict[Path, Path] = {}
        self._lock = threading.Lock()

    # -------------------------------------------------------------------------- helpers
    def _path(self, key: str) -> Path:
        return self.root.joinpath(*clean_relative(key).parts)

    def _info(self, key: str, st: os.stat_result) -> ObjectInfo:
        version = _version(st)
        return ObjectInfo(
            key=key,
            size=st.st_size,
            etag=version,
            version=version,
            last_modified=datetime.fromtimestamp(st.st_mtime, UTC).isoformat(),
            checksum_note="none: a local file has no stored checksum",
        )

    def uri(self, key: str) -> str:
        return self._path(key).as_uri()

    # -------------------------------------------------------------------------- reading
    def stat(self, key: str) -> ObjectInfo:
        path = self._path(key)
        try:
            st = os.stat(path, follow_symlinks=False)
        except OSError as exc:
            raise _translate(exc, key) from None
        if not path.is_file() or path.is_symlink():
            raise NotFound(f"not a regular file: {key}")
        return self._info(key, st)

    def read(
        self, key: str, *, start: int = 0, length: int | None = None, pin: ObjectInfo | None = None
    ) -> StreamContext:
        try:
            fd = os.open(self._path(key), os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as exc:
            raise _translate(exc, key) from None
        if pin is not None and pin.version and _version(os.fstat(fd)) != pin.version:
            os.close(fd)
            raise Changed(f"{key} changed while it was being read")
        return StreamContext(_FileBody(fd, start, length))

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        folder_part = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        top = self.root.joinpath(*clean_relative(folder_part).parts) if folder_part else self.root
        found: list[tuple[str, os.stat_result]] = []
        for dirpath, dirnames, filenames in os.walk(top):
            rel_dir = os.path.relpath(dirpath, self.root)
            rel_dir = "" if rel_dir == "." else rel_dir.replace(os.sep, "/")
            dirnames[:] = [d for d in dirnames if not (rel_dir == "" and d == TMP_DIR)]
            for fname in filenames:
                key = join_key(rel_dir, fname)
                if not key.startswith(prefix):
                    continue
                st = os.stat(os.path.join(dirpath, fname), follow_symlinks=False)
                if os.path.isfile(os.path.join(dirpath, fname)) and not os.path.islink(
                    os.path.join(dirpath, fname)
                ):
                    found.append((key, st))
        for key, st in sorted(found):
            yield self._info(key, st)

    # -------------------------------------------------------------------------- writing
    def _tmp_path(self) -> Path:
        tmp_dir = self.root / TMP_DIR
        tmp_dir.mkdir(parents=True, exist_ok=True)
        return tmp_dir / uuid.uuid4().hex

    def create(self, key: str, path: Path, *, size: int, md5: str | None = None) -> None:
        target = self._path(key)
        if target.exists():
            raise AlreadyExists(f"already exists: {key}")
        with self._lock:
            staged = self._staged.pop(path, None)
        tmp = staged or self._tmp_path()
        try:
            if staged is not None:
                # The copy holds the very bytes that were hashed; the file must still hold
                # them too (byte for byte, a cheaper check than a second md5).
                if not _same_bytes(path, staged, size):
                    raise Changed(f"{path.name} changed while it was being stored")
            else:
                copied, digest = _copy(path, tmp)
                # The md5 is the caller's hash of the file: bytes that differ (the file was
                # rewritten after it was hashed) never reach a content-addressed key.
                if copied != size or (md5 is not None and digest != md5):
                    raise Changed(f"{path.name} changed while it was being stored")
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(tmp, target)
        except OSError as exc:
            raise _translate(exc, key) from None
        finally:
            tmp.unlink(missing_ok=True)

    def stage(self, source: Path) -> int:
        """A private file in the store's temporary folder for ``source``'s bytes, written while
        they are hashed (:func:`worker.transfer.upload.hash_file`); :meth:`create` of
        ``source`` then links it instead of copying."""
        tmp = self._tmp_path()
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
        except OSError as exc:
            raise _translate(exc, tmp.name) from None
        with self._lock:
            self._staged[source] = tmp
        return fd

    def unstage(self, source: Path) -> None:
        with self._lock:
            tmp = self._staged.pop(source, None)
        if tmp is not None:
            tmp.unlink(missing_ok=True)

    def delete(self, key: str) -> bool:
        path = self._path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise _translate(exc, key) from None
        # Drop folders the delete left empty, up to the store root.
        parent = path.parent
        while parent != self.root and self.root in parent.parents:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent
        return True

    def put_record(self, key: str, data: bytes) -> None:
        target = self._path(key)
        tmp = self._tmp_path()
        try:
            tmp.write_bytes(data)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, target)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise _translate(exc, key) from None

    def get_record(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except OSError as exc:
            raise _translate(exc, key) from None


class LocalStoreConfig(StoreConfigBase):
    type: Literal["local"]
    path: Path


def from_config(
    name: str, cfg: LocalStoreConfig, secrets: StoreSecrets, tuning: StoreTuning
) -> LocalStore:
    cfg.path.mkdir(parents=True, exist_ok=True)
    return LocalStore(name, cfg.path)


def _owns(cfg: LocalStoreConfig, secrets: StoreSecrets, url: ParsedURL) -> bool:
    return url.key == str(cfg.path) or url.key.startswith(str(cfg.path).rstrip("/") + "/")


def _adhoc(url: ParsedURL) -> StoreConfigBase:
    raise UnsupportedURL(
        f"file:// URLs are read only from declared local stores; no local store contains {url.key}"
    )


def _key_of(cfg: LocalStoreConfig, url: ParsedURL) -> str:
    return Path(url.key).relative_to(cfg.path).as_posix()


STORE_TYPE = StoreType(
    name="local",
    scheme="file",
    url_form="file:///absolute/path",
    location_parts=0,
    config=LocalStoreConfig,
    build=from_config,
    owns=_owns,
    adhoc=_adhoc,
    key_of=_key_of,
)
