"""``haul.store_outputs``: every regular file under ``outputs/`` becomes a datum.

Symlinks, special files and anything that resolves outside ``outputs/`` are refused and
reported, never followed. ``<file>.metadata.json`` sidecars are attached to their file's datum.
A sidecar whose file does not exist is stored as an ordinary output, so nothing is lost.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from worker.constants import (
    EV_ALIAS_MOVED,
    EV_DATASET_VERSION_CREATED,
    EV_OUTPUT_REFUSED,
    EV_OUTPUT_STORED,
    EV_OUTPUTS_FAILED,
    EV_OUTPUTS_STORED,
    METADATA_SUFFIX,
    OUTPUTS_DIR,
)
from worker.errors import HaulError, LeaseLost
from worker.events import Pending, now_iso
from worker.models import (
    AliasMoved,
    DatasetVersionCreated,
    Datum,
    ErrorInfo,
    OutputRefused,
    OutputsFailed,
    OutputsStored,
    OutputStored,
    StoreOutputs,
)
from worker.observability import metrics
from worker.paths import hidden_characters
from worker.pipeline.protocol import Outcome
from worker.pipeline.runtime import Runtime
from worker.pipeline.sidecar import Metadata, read_sidecar
from worker.records.aliases import AliasIndex
from worker.records.datasets import DatasetIndex, Member
from worker.records.datums import content_key, datum_id
from worker.records.live import FileSignature, LiveFiles
from worker.retry import store_type_of
from worker.stores.base import Store
from worker.transfer.upload import Hashed, hash_file, send

T = TypeVar("T")


class OutputsFailedError(HaulError):
    """The execution's outputs cannot be stored as a whole (no ``outputs/`` folder)."""

    code = "outputs_failed"


@dataclass(frozen=True)
class Candidate:
    rel: str
    path: Path
    sidecar: Path | None
    #: bytes when scanned
    size: int = 0


#: before a file this large, the facts deferred so far are published (not held during it)
_FLUSH_BEFORE_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class _Metadata:
    tags: list[str]
    alias: str | None
    extra: dict[str, Any]


def scan(outputs: Path) -> tuple[list[Candidate], list[tuple[str, str]]]:
    """Regular files to store, and (path, reason) of everything refused.

    A regular file with more hard links than the walk finds under ``outputs/`` shares its
    inode with a file elsewhere (``ln /etc/shadow outputs/x``): it does not resolve outside,
    yet it is someone else's file, so it is refused like a symlink.
    """
    files: dict[str, Path] = {}
    sizes: dict[str, int] = {}
    refused: list[tuple[str, str]] = []
    linked: dict[str, tuple[tuple[int, int], int]] = {}

    def unreadable(exc: OSError) -> None:
        where = _rel(outputs, Path(exc.filename)) if exc.filename else "."
        refused.append((where, f"cannot be read: {exc.strerror or exc}"))

    for dirpath, dirnames, filenames in os.walk(outputs, onerror=unreadable, followlinks=False):
        base = Path(dirpath)
        for name in list(dirnames):
            if (base / name).is_symlink():
                dirnames.remove(name)
                refused.append((_rel(outputs, base / name), "a symlink to a folder; not followed"))
        for name in filenames:
            path = base / name
            rel = _rel(outputs, path)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                refused.append((rel, "a symlink; not followed"))
            elif not stat.S_ISREG(st.st_mode):
                refused.append((rel, "not a regular file"))
            elif not os.path.realpath(path).startswith(os.path.realpath(outputs) + os.sep):
                refused.append((rel, "resolves outside outputs/"))
            elif hidden := hidden_characters(rel):
                shown = ", ".join(dict.fromkeys(hidden))
                refused.append((rel, f"the name holds control or bidi characters ({shown})"))
            else:
                files[rel] = path
                sizes[rel] = st.st_size
                if st.st_nlink > 1:
                    linked[rel] = ((st.st_dev, st.st_ino), st.st_nlink)
    inside = Counter(inode for inode, _links in linked.values())
    for rel, (inode, links) in linked.items():
        if inside[inode] < links:
            del files[rel]
            refused.append((rel, "a hard link to a file outside outputs/; copy it instead"))
    candidates = []
    for rel in sorted(files):
        if rel.endswith(METADATA_SUFFIX) and rel.removesuffix(METADATA_SUFFIX) in files:
            continue
        sidecar = files.get(rel + METADATA_SUFFIX)
        candidates.append(Candidate(rel, files[rel], sidecar, sizes[rel]))
    return candidates, refused


def _rel(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


class OutputsJob:
    def __init__(self, runtime: Runtime, msg: StoreOutputs, defer_events: bool = False) -> None:
        self.rt = runtime
        self.msg = msg
        #: ``haul.output.stored`` goes out with the job's next event instead of on its own
        #: (store_outputs; a live watch publishes each file's at once)
        self.defer_events = defer_events
        self.store_name = runtime.settings.store_for_project(msg.project_id, msg.store)
        self.outputs = runtime.execution_dir(msg.execution_id) / OUTPUTS_DIR
        self.aliases = AliasIndex(runtime.redis)
        self.datasets = DatasetIndex(runtime.redis)

    def refuse(self, rel: str, reason: str, *identity: str) -> None:
        self.rt.events.publish(
            EV_OUTPUT_REFUSED,
            self.msg.execution_id,
            OutputRefused(execution_id=self.msg.execution_id, path=rel, reason=reason),
            self.msg.execution_id,
            rel,
            *identity,
        )

    def metadata(self, c: Candidate) -> Metadata:
        """The file's sidecar, each unusable part of it reported against the sidecar."""
        if c.sidecar is None:
            return Metadata()
        where = c.rel + METADATA_SUFFIX
        try:
            meta = read_sidecar(c.sidecar)
        except ValueError as exc:
            self.refuse(where, f"metadata sidecar ignored: {exc}")
            return Metadata()
        for problem in meta.problems:
            self.refuse(where, problem, problem)
        return meta

    def store_watched(self, store: Store, c: Candidate, live: LiveFiles) -> dict[str, Any] | None:
        """A file of a watched execution: the very file the watch stored is not sent again."""
        with live.file_lock(c.rel, unless_watch_died=True):
            record = live.get(c.rel)
            if record is not None and record.file == FileSignature.of(os.lstat(c.path)):
                return self.reuse(store, c, record.datum_id)
            return self.store_one(store, c)

    def reuse(self, store: Store, c: Candidate, did: str) -> dict[str, Any] | None:
        """The datum stored live for ``c``, with the metadata its sidecar holds now."""
        datum = self.rt.datums.get(did)
        if datum.purged:
            self.refuse(c.rel, f"datum {did} was purged; its content is not stored again")
            return None
        meta = self.metadata(c)
        updated = datum.model_copy(
            update={"tags": meta.tags, "alias": meta.alias, "metadata": meta.extra}
        )
        if updated != datum:
            updated = self.rt.datums.update(updated)
            self.in_store(
                store, lambda: self.rt.datums.write_store_record(store, updated), updated.datum_id
            )
        return self.announce(store, updated, meta, deduplicated=True)

    def store_one(self, store: Store, c: Candidate) -> dict[str, Any] | None:
        meta = self.metadata(c)
        hashed = hash_file(c.path, self.rt.transfer, store)
        try:
            return self._store_hashed(store, c, meta, hashed)
        finally:
            hashed.discard()  # a private copy is linked to its key by now, or not needed

    def _store_hashed(
        self, store: Store, c: Candidate, meta: Metadata, hashed: Hashed
    ) -> dict[str, Any] | None:
        d = hashed.digests
        key = content_key(store.prefix, self.msg.project_id, d.sha256, c.path.name)
        did = datum_id(self.msg.project_id, self.msg.execution_id, c.rel, d.sha256)
        index = self.rt.datums
        # The reference is taken before the store is asked, under the key's lock, so a purge
        # of another datum with the same content cannot delete it in between.
        if not index.reserve(self.store_name, key, did):
            # Someone purged this very datum: storing the same file again must not revive it.
            self.refuse(c.rel, f"datum {did} was purged; its content is not stored again")
            return None
        try:
            deduplicated = send(store, hashed, key, self.rt.transfer)
        except BaseException:
            index.release(self.store_name, key, did)
            raise
        datum = Datum(
            datum_id=did,
            project_id=self.msg.project_id,
            execution_id=self.msg.execution_id,
            path=c.rel,
            uri=store.uri(key),
            key=key,
            store=self.store_name,
            size=d.size,
            md5=d.md5,
            sha1=d.sha1,
            sha256=d.sha256,
            created_at=now_iso(),
            tags=meta.tags,
            alias=meta.alias,
            metadata=meta.extra,
        )
        datum = index.add(datum)
        self.in_store(store, lambda: index.write_store_record(store, datum), datum.datum_id)
        metrics.transferred("out", self.store_name, d.size)
        return self.announce(store, datum, meta, deduplicated)

    def in_store(self, store: Store, write: Callable[[], T], what: str) -> T:
        """Record writes to the store, retried by the engine's policy (the retry owner)."""
        return self.rt.transfer.policy.call(
            write, store_type=store_type_of(store), what=f"record {what}"
        )

    def announce(
        self, store: Store, datum: Datum, meta: Metadata, deduplicated: bool
    ) -> dict[str, Any]:
        """Join the datum's dataset versions, move its alias, publish ``haul.output.stored``."""
        versions = self.join_versions(datum, meta)
        if datum.alias is not None:
            self.move_alias(store, datum, datum.alias)
        stored = OutputStored(
            execution_id=self.msg.execution_id,
            project_id=self.msg.project_id,
            datum_id=datum.datum_id,
            path=datum.path,
            uri=datum.uri,
            key=datum.key,
            size=datum.size,
            md5=datum.md5,
            sha1=datum.sha1,
            sha256=datum.sha256,
            deduplicated=deduplicated,
            tags=datum.tags,
            alias=datum.alias,
            dataset_versions=versions,
        )
        ids = (self.msg.execution_id, datum.path, datum.sha256)
        if self.defer_events:
            self.rt.events.defer([(EV_OUTPUT_STORED, self.msg.execution_id, stored, ids)])
        else:
            self.rt.events.publish(EV_OUTPUT_STORED, self.msg.execution_id, stored, *ids)
        return {
            "datum_id": datum.datum_id,
            "path": datum.path,
            "uri": datum.uri,
            "key": datum.key,
            "size": datum.size,
            "sha256": datum.sha256,
            "deduplicated": deduplicated,
            "dataset_versions": versions,
        }

    def join_versions(self, datum: Datum, meta: Metadata) -> list[str]:
        joined: list[str] = []
        member = Member(datum.path, datum.datum_id)
        for entry in dict.fromkeys(meta.dataset_versions):
            reason = self.datasets.join(
                self.msg.project_id, self.msg.execution_id, entry, member, datum.created_at
            )
            if reason is None:
                if entry.target.uri not in joined:
                    joined.append(entry.target.uri)
            else:
                self.refuse(
                    datum.path, f"not added to {entry.target.uri}: {reason}", entry.target.uri
                )
        return joined

    def move_alias(self, store: Store, datum: Datum, alias: str) -> None:
        move = self.aliases.move(datum, alias)
        self.in_store(store, lambda: self.aliases.write_store_record(store, move), alias)
        self.rt.events.publish(
            EV_ALIAS_MOVED,
            self.msg.execution_id,
            AliasMoved(
                project_id=move.project_id,
                alias=move.alias,
                datum_id=move.datum_id,
                previous_datum_id=move.previous_datum_id,
                execution_id=move.execution_id,
            ),
            move.project_id,
            move.alias,
            move.datum_id,
        )

    def seal_versions(self, store: Store) -> list[str]:
        """Seal every version this execution named; one ``haul.dataset.version.created`` each."""
        sealed: list[str] = []
        for ref in self.datasets.claimed(self.msg.project_id, self.msg.execution_id):
            version = self.in_store(
                store,
                partial(self.datasets.seal, store, self.msg.project_id, self.msg.execution_id, ref),
                ref.uri,
            )
            self.rt.events.publish(
                EV_DATASET_VERSION_CREATED,
                self.msg.execution_id,
                DatasetVersionCreated(
                    project_id=self.msg.project_id,
                    dataset=ref.dataset,
                    version=ref.version,
                    datum_ids=version.datum_ids,
                    files=version.files,
                    bytes=version.bytes,
                ),
                self.msg.project_id,
                ref.dataset,
                ref.version,
            )
            sealed.append(ref.uri)
        return sealed


def _check_lease(lease_lost: threading.Event | None, execution_id: str) -> None:
    if lease_lost is not None and lease_lost.is_set():
        raise LeaseLost(f"execution {execution_id} was taken over by another worker")


def outputs_failed(runtime: Runtime, msg: StoreOutputs, exc: HaulError) -> Pending:
    """``haul.outputs.failed`` for any failure of the job (the runner publishes it)."""
    failed = OutputsFailed(
        execution_id=msg.execution_id,
        project_id=msg.project_id,
        error=ErrorInfo(code=exc.code, message=str(exc)),
    )
    return (EV_OUTPUTS_FAILED, msg.execution_id, failed, (msg.execution_id,))


def store_outputs(
    runtime: Runtime, msg: StoreOutputs, lease_lost: threading.Event | None = None
) -> Outcome:
    """Store every output; the summary and ``haul.outputs.stored`` for the runner to publish."""
    started = time.monotonic()
    job = OutputsJob(runtime, msg, defer_events=True)
    if not job.outputs.is_dir() or job.outputs.is_symlink():
        raise OutputsFailedError(f"execution {msg.execution_id} has no outputs/ folder")
    store = runtime.sources.store(job.store_name)
    # A watch of this execution ends now; files it stored are recognised, not sent again.
    live = LiveFiles(runtime.redis, msg.execution_id)
    watched = live.stop()
    candidates, refused = scan(job.outputs)
    for rel, reason in refused:
        job.refuse(rel, reason)
    stored = []
    for c in candidates:
        _check_lease(lease_lost, msg.execution_id)
        if c.size >= _FLUSH_BEFORE_BYTES:
            runtime.events.flush()  # what is stored so far is not held while this one goes
        one = job.store_watched(store, c, live) if watched else job.store_one(store, c)
        if one is not None:
            stored.append(one)
    versions = job.seal_versions(store)
    total = sum(s["size"] for s in stored)
    seconds = round(time.monotonic() - started, 3)
    done = OutputsStored(
        execution_id=msg.execution_id,
        project_id=msg.project_id,
        files=len(stored),
        bytes=total,
        seconds=seconds,
    )
    summary = {
        "status": "stored",
        "execution_id": msg.execution_id,
        "project_id": msg.project_id,
        "store": job.store_name,
        "files": len(stored),
        "bytes": total,
        "seconds": seconds,
        "datums": stored,
        "dataset_versions": versions,
        "refused": [{"path": p, "reason": r} for p, r in refused],
    }
    return Outcome(summary, (EV_OUTPUTS_STORED, msg.execution_id, done, (msg.execution_id,)))
