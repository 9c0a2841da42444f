"""A per-worker cache of downloaded content, shared by the worker processes of one machine.

An entry is the content of one object version: keyed by the source id (store name and the
object's redacted URL or store URI), valid for one version token. Before reuse, the caller
passes a fresh stat (:meth:`Cache.lookup`): an entry is used only when the version token and size
are unchanged, otherwise it is dropped. A hit is hard-linked into the execution's input folder
(copied when the two are on different file systems) and its recorded hashes are reused, so the
content is neither downloaded nor hashed again.

Layout under ``root``::

    entries/<h[:2]>/<h>/data        the content (h = sha256 of the source id)
    entries/<h[:2]>/<h>/meta.json   source id, version, size, digests, the data file's identity
    tmp/                            entries being built, renamed into place whole
    lock, usage                     flock-ed while entries are added or removed; bytes held

Entries appear and disappear by ``rename``, so readers need no lock; writers (store, evict,
invalidate) hold an exclusive ``flock`` on ``lock``. Least recently used entries (by the mtime of
``meta.json``, touched on every hit) are evicted to stay under ``max_bytes``. Because the data is
hard-linked, an execution that rewrites its input in place would change the cached bytes: the
data file's inode, size, mtime and ctime are recorded and checked, and a changed entry is
dropped. ctime matters: a process can set mtime back with ``utime`` but cannot set ctime, and
every write, chmod, link or unlink of the inode moves it. So the entry re-records its ctime after
each link it makes; an execution folder deleted later (an unlink elsewhere) makes the entry look
changed, which costs a download, never wrong bytes.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.constants import PART_SUFFIX
from worker.hashing import Digests
from worker.settings import Settings
from worker.stores.base import ObjectInfo

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CachedEntry:
    entry: Path
    digests: Digests
    version: str

    @property
    def data(self) -> Path:
        return self.entry / "data"

    def link_to(self, dest: Path) -> bool:
        """Put the content at ``dest`` (link, else copy); False when the entry just vanished."""
        tmp = dest.with_name(dest.name + PART_SUFFIX)
        tmp.unlink(missing_ok=True)
        try:
            try:
                os.link(self.data, tmp)
            except FileNotFoundError:
                return False
            except OSError:
                shutil.copyfile(self.data, tmp)
        except FileNotFoundError:
            tmp.unlink(missing_ok=True)
            return False
        os.replace(tmp, dest)
        # The link moved the inode's ctime: record it, so a later write shows as a change.
        with contextlib.suppress(OSError):
            meta = json.loads((self.entry / "meta.json").read_text())
            meta["identity"] = _identity(self.data)
            _write_meta(self.entry, meta)  # also the least-recently-used ordering
        return True


class Cache:
    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self._entries = root / "entries"
        self._tmp = root / "tmp"
        for folder in (self._entries, self._tmp):
            folder.mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_settings(cls, settings: Settings) -> Cache | None:
        """The worker's cache, or None when ``cache_enabled`` is false."""
        if not settings.cache_enabled or settings.cache_max_bytes <= 0:
            return None
        return cls(settings.cache_dir, settings.cache_max_bytes)

    # ------------------------------------------------------------------ helpers
    def _entry(self, source_id: str) -> Path:
        h = hashlib.sha256(source_id.encode()).hexdigest()
        return self._entries / h[:2] / h

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing drops the flock

    def _usage(self) -> int:
        try:
            return int((self.root / "usage").read_text() or 0)
        except (OSError, ValueError):
            return self._rescan()[1]

    def _set_usage(self, value: int) -> None:
        tmp = self._tmp / f"usage-{uuid.uuid4().hex}"
        tmp.write_text(str(max(value, 0)))
        os.replace(tmp, self.root / "usage")

    def _remove(self, entry: Path) -> int:
        """Take ``entry`` away atomically (rename) and delete it; returns the bytes freed."""
        size = _meta_size(entry)
        doomed = self._tmp / f"gone-{uuid.uuid4().hex}"
        try:
            os.rename(entry, doomed)
        except FileNotFoundError:
            return 0
        shutil.rmtree(doomed, ignore_errors=True)
        return size

    def _rescan(self) -> tuple[list[tuple[float, Path, int]], int]:
        found: list[tuple[float, Path, int]] = []
        for meta in self._entries.glob("*/*/meta.json"):
            try:
                used = meta.stat().st_mtime
            except FileNotFoundError:
                continue
            found.append((used, meta.parent, _meta_size(meta.parent)))
        return found, sum(size for _, _, size in found)

    # ------------------------------------------------------------------ API
    def lookup(self, source_id: str, info: ObjectInfo) -> CachedEntry | None:
        """The entry for ``source_id`` if it holds ``info``'s version, else None (and drop it)."""
        entry = self._entry(source_id)
        meta = _read_meta(entry)
        if meta is None:
            return None
        fresh = (
            info.version is not None
            and meta.get("source_id") == source_id
            and meta.get("version") == info.version
            and meta.get("size") == info.size
        )
        if fresh:
            try:
                fresh = _identity(entry / "data") == meta.get("identity")
            except FileNotFoundError:
                return None
        if not fresh:
            with self._locked():
                freed = self._remove(entry)
                if freed:
                    self._set_usage(self._usage() - freed)
            log.info("cache entry for %s is stale (version or content changed)", source_id)
            return None
        d = meta["digests"]
        digests = Digests(d["md5"], d["sha1"], d["sha256"], int(meta["size"]))
        return CachedEntry(entry, digests, str(meta["version"]))

    def store(self, source_id: str, info: ObjectInfo, path: Path, digests: Digests) -> bool:
        """Keep ``path`` (just downloaded and verified) as the content of ``info``'s version.

        Never fails the download: a cache that cannot take the entry logs and returns False.
        """
        if info.version is None or digests.size > self.max_bytes:
            return False
        build = self._tmp / f"new-{uuid.uuid4().hex}"
        try:
            build.mkdir()
            try:
                os.link(path, build / "data")
            except OSError:
                shutil.copyfile(path, build / "data")
            meta = {
                "source_id": source_id,
                "version": info.version,
                "size": digests.size,
                "digests": digests.as_dict(),
                "identity": _identity(build / "data"),
            }
            _write_meta(build, meta)
            entry = self._entry(source_id)
            entry.parent.mkdir(exist_ok=True)
            with self._locked():
                usage = self._usage() - self._remove(entry)
                if usage + digests.size > self.max_bytes:
                    usage = self._evict(self.max_bytes - digests.size)
                os.rename(build, entry)
                self._set_usage(usage + digests.size)
        except OSError as exc:
            log.warning("cache: cannot keep %s: %s", source_id, exc)
            shutil.rmtree(build, ignore_errors=True)
            return False
        else:
            return True

    def _evict(self, target: int) -> int:
        """Drop least recently used entries until at most ``target`` bytes remain (locked)."""
        found, total = self._rescan()
        for _, entry, size in sorted(found, key=lambda item: item[0]):
            if total <= target:
                break
            total -= self._remove(entry) or size
        return total

    def usage_bytes(self) -> int:
        return self._usage()


def _identity(path: Path) -> list[int]:
    st = os.stat(path)
    return [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _write_meta(entry: Path, meta: dict[str, Any]) -> None:
    tmp = entry / f"meta.json.{uuid.uuid4().hex}"
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, entry / "meta.json")


def _read_meta(entry: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((entry / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _meta_size(entry: Path) -> int:
    meta = _read_meta(entry)
    size = meta.get("size") if meta else 0
    return size if isinstance(size, int) else 0
