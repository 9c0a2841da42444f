"""``haul.store_outputs``: every regular file under ``outputs/`` becomes a datum.

Symlinks, special files and anything that resolves outside ``outputs/`` are refused and
reported, never followed. ``<file>.metadata.json`` sidecars are attached to their file's datum.
A sidecar whose file does not exist is stored as an ordinary output, so nothing is lost.
"""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.constants import (
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
    Datum,
    ErrorInfo,
    OutputRefused,
    OutputsFailed,
    OutputsStored,
    OutputStored,
    StoreOutputs,
)
from worker.observability import metrics
from worker.pipeline.protocol import Outcome
from worker.pipeline.runtime import Runtime
from worker.records.datums import content_key, datum_id
from worker.retry import store_type_of
from worker.stores.base import Store
from worker.transfer.upload import hash_file, send


class OutputsFailedError(HaulError):
    """The execution's outputs cannot be stored as a whole (no ``outputs/`` folder)."""

    code = "outputs_failed"


@dataclass(frozen=True)
class _Candidate:
    rel: str
    path: Path
    sidecar: Path | None


@dataclass(frozen=True)
class _Metadata:
    tags: list[str]
    alias: str | None
    extra: dict[str, Any]


def scan(outputs: Path) -> tuple[list[_Candidate], list[tuple[str, str]]]:
    """Regular files to store, and (path, reason) of everything refused."""
    files: dict[str, Path] = {}
    refused: list[tuple[str, str]] = []

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
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                refused.append((rel, "a symlink; not followed"))
            elif not stat.S_ISREG(mode):
                refused.append((rel, "not a regular file"))
            elif not os.path.realpath(path).startswith(os.path.realpath(outputs) + os.sep):
                refused.append((rel, "resolves outside outputs/"))
            else:
                files[rel] = path
    candidates = []
    for rel in sorted(files):
        if rel.endswith(METADATA_SUFFIX) and rel.removesuffix(METADATA_SUFFIX) in files:
            continue
        sidecar = files.get(rel + METADATA_SUFFIX)
        candidates.append(_Candidate(rel, files[rel], sidecar))
    return candidates, refused


def _rel(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def read_sidecar(path: Path) -> _Metadata:
    """Parse a ``.metadata.json`` sidecar; raise ValueError saying what is wrong."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError("must be a JSON object")  # noqa: TRY004 (reported as a problem, not a bug)
    tags = doc.pop("valohai.tags", [])
    alias = doc.pop("valohai.alias", None)
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise ValueError("valohai.tags must be a list of strings")
    if alias is not None and not isinstance(alias, str):
        raise ValueError("valohai.alias must be a string")
    return _Metadata(tags, alias, doc)


class _Job:
    def __init__(self, runtime: Runtime, msg: StoreOutputs) -> None:
        self.rt = runtime
        self.msg = msg
        self.store_name = runtime.settings.store_for_project(msg.project_id, msg.store)
        self.outputs = runtime.execution_dir(msg.execution_id) / OUTPUTS_DIR

    def refuse(self, rel: str, reason: str) -> None:
        self.rt.events.publish(
            EV_OUTPUT_REFUSED,
            self.msg.execution_id,
            OutputRefused(execution_id=self.msg.execution_id, path=rel, reason=reason),
            self.msg.execution_id,
            rel,
        )

    def store_one(self, store: Store, c: _Candidate) -> dict[str, Any] | None:
        meta = _Metadata([], None, {})
        if c.sidecar is not None:
            try:
                meta = read_sidecar(c.sidecar)
            except ValueError as exc:
                self.refuse(c.rel + METADATA_SUFFIX, f"metadata sidecar ignored: {exc}")
        hashed = hash_file(c.path, self.rt.transfer)
        d = hashed.digests
        key = content_key(store.prefix, self.msg.project_id, d.sha256, c.path.name)
        did = datum_id(self.msg.project_id, self.msg.execution_id, c.rel, d.sha256)
        if self.rt.datums.is_purged(did):
            # Someone purged this very datum: storing the same file again must not revive it.
            self.refuse(c.rel, f"datum {did} was purged; its content is not stored again")
            return None
        index = self.rt.datums
        # The reference is taken before the store is asked, under the key's lock, so a purge
        # of another datum with the same content cannot delete it in between.
        with index.content_lock(self.store_name, key):
            index.reserve(self.store_name, key, did)
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
        self.rt.transfer.policy.call(
            lambda: index.write_store_record(store, datum),
            store_type=store_type_of(store),
            what=f"datum record {datum.datum_id}",
        )
        metrics.transferred("out", self.store_name, d.size)
        self.rt.events.publish(
            EV_OUTPUT_STORED,
            self.msg.execution_id,
            OutputStored(
                execution_id=self.msg.execution_id,
                project_id=self.msg.project_id,
                datum_id=datum.datum_id,
                path=c.rel,
                uri=datum.uri,
                key=datum.key,
                size=d.size,
                md5=d.md5,
                sha1=d.sha1,
                sha256=d.sha256,
                deduplicated=deduplicated,
                tags=datum.tags,
                alias=datum.alias,
            ),
            self.msg.execution_id,
            c.rel,
            d.sha256,
        )
        return {
            "datum_id": datum.datum_id,
            "path": c.rel,
            "uri": datum.uri,
            "key": datum.key,
            "size": d.size,
            "sha256": d.sha256,
            "deduplicated": deduplicated,
        }


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
    job = _Job(runtime, msg)
    if not job.outputs.is_dir() or job.outputs.is_symlink():
        raise OutputsFailedError(f"execution {msg.execution_id} has no outputs/ folder")
    store = runtime.sources.store(job.store_name)
    candidates, refused = scan(job.outputs)
    for rel, reason in refused:
        job.refuse(rel, reason)
    stored = []
    for c in candidates:
        _check_lease(lease_lost, msg.execution_id)
        if (one := job.store_one(store, c)) is not None:
            stored.append(one)
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
        "refused": [{"path": p, "reason": r} for p, r in refused],
    }
    return Outcome(summary, (EV_OUTPUTS_STORED, msg.execution_id, done, (msg.execution_id,)))
