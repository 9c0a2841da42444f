"""``haul.prepare_inputs``: download, hash, record and lay out an execution's inputs."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError

from worker.constants import (
    CONFIG_DIR,
    EV_INPUT_CHANGED,
    EV_INPUT_DOWNLOADED,
    EV_INPUT_SKIPPED,
    EV_INPUTS_FAILED,
    EV_INPUTS_READY,
    EV_PROGRESS,
    HAUL_LOG,
    INPUTS_DIR,
    INPUTS_JSON,
    KEY_INPUT_FILES,
    KEY_INPUT_LOGGED,
    OUTPUTS_DIR,
    PART_RECORD_SUFFIX,
    PART_SUFFIX,
)
from worker.errors import HaulError, LeaseLost, NotFound, ReportedFailure, UnsafePathError
from worker.events import Pending, now_iso
from worker.hashing import Digests
from worker.models import (
    ErrorInfo,
    InputChanged,
    InputDownloaded,
    InputsFailed,
    InputSkipped,
    InputsReady,
    PrepareInputs,
    SeenContent,
    SourceInfo,
    TransferProgress,
)
from worker.paths import clean_relative, safe_join
from worker.pipeline.plan import PlannedFile, plan_input
from worker.pipeline.runtime import Runtime
from worker.records.change_memory import Seen, change_message
from worker.records.haul_log import HaulLog, file_lines, stamp
from worker.records.inputs_json import InputFile, write_inputs_json
from worker.stores.base import ObjectInfo
from worker.transfer.batch import BatchItem, BatchResult, download_many
from worker.transfer.download import Downloaded
from worker.transfer.progress import Progress

log = logging.getLogger(__name__)
_DONE_TTL_S = 30 * 24 * 3600
#: finished-file records are written to Redis in batches of this many, or this often
_REMEMBER_BATCH = 200
_REMEMBER_EVERY_S = 1.0
#: files whose haul.log lines, change records and events go out together
_RECORD_CHUNK = 500


class InputsFailedError(ReportedFailure):
    """The task's failure after ``haul.inputs.failed`` was published."""

    code = "inputs_failed"


@dataclass(frozen=True)
class _Fetched:
    planned: PlannedFile
    result: Downloaded
    shown_path: str


def _done_key(execution_id: str) -> str:
    return f"{KEY_INPUT_FILES}:{execution_id}"


class _Job:
    def __init__(
        self, runtime: Runtime, msg: PrepareInputs, progress: Callable[[Progress], None] | None
    ) -> None:
        self.rt = runtime
        self.msg = msg
        self.progress = progress
        self.exec_dir = runtime.execution_dir(msg.execution_id)
        self.inputs_dir = self.exec_dir / INPUTS_DIR
        self.haul_log = HaulLog(self.exec_dir / HAUL_LOG)
        self.mount = runtime.settings.inputs_mount.rstrip("/")
        self.changed: list[dict[str, str]] = []
        self._checked: set[Path] = set()
        self._finished: dict[str | bytes, str] = {}
        self._finished_lock = threading.Lock()
        self._flushed_at = time.monotonic()
        #: set when another worker took the execution over (prepare_inputs sets it)
        self.lease_lost: threading.Event | None = None

    # ------------------------------------------------------------------ layout
    def lay_out(self) -> None:
        for folder in (
            self.exec_dir,
            *(self.exec_dir / s for s in (INPUTS_DIR, OUTPUTS_DIR, CONFIG_DIR)),
        ):
            folder.mkdir(parents=True, exist_ok=True)
            if folder.is_symlink():
                raise UnsafePathError(f"{folder} is a symlink; haul writes only into real folders")

    def dest(self, f: PlannedFile) -> Path:
        # Checked against inputs/ itself, so a symlinked inputs/<name> cannot lead out either.
        rel = f"{f.input}/{f.rel}"
        target = self.inputs_dir.joinpath(*clean_relative(rel).parts)
        if target.parent in self._checked:
            return target  # the folder was made and checked for an earlier file
        safe_join(self.inputs_dir, rel).parent.mkdir(parents=True, exist_ok=True)
        # The folders exist now; check again that none of them is a symlink leading out.
        checked = safe_join(self.inputs_dir, rel)
        self._checked.add(checked.parent)
        return checked

    def shown_path(self, f: PlannedFile) -> str:
        return f"{self.mount}/{f.input}/{f.rel}"

    # ------------------------------------------------------------------ one file
    def remember(self, f: PlannedFile, result: Downloaded) -> None:
        """Note a finished file, so a redelivered message reuses it instead of fetching again."""
        record = {
            **result.digests.as_dict(),
            "size": result.digests.size,
            "url": f.url,
            "etag": result.info.etag,
            "version": result.info.version,
            "last_modified": result.info.last_modified,
            "checksum": result.info.checksum_note,
        }
        with self._finished_lock:
            self._finished[f"{f.input}/{f.rel}"] = json.dumps(record)
            due = len(self._finished) >= _REMEMBER_BATCH
        if due:
            self.flush_finished()
        else:
            self.flush_if_due()

    def flush_if_due(self) -> None:
        if time.monotonic() - self._flushed_at >= _REMEMBER_EVERY_S:
            self.flush_finished()

    def flush_finished(self) -> None:
        """Write the buffered records: a few files finished just before a crash are fetched
        again by the redelivered message; a round trip per small file would cost more.

        Records only save refetching: a Redis error keeps the batch for the next flush (and
        is logged) instead of failing the input or hiding its real error. Once the transfers
        were stopped (the lease was lost, or a failure stopped the input) nothing more is
        written: a new holder of the lease may have fetched the same file again meanwhile.
        """
        with self._finished_lock:
            batch, self._finished = self._finished, {}
            self._flushed_at = time.monotonic()
        if not batch or (self.lease_lost is not None and self.lease_lost.is_set()):
            return
        try:
            pipe = self.rt.redis.pipeline()
            pipe.hset(_done_key(self.msg.execution_id), mapping=batch)
            pipe.expire(_done_key(self.msg.execution_id), _DONE_TTL_S)
            pipe.execute()
        except RedisError as exc:
            log.warning("could not record %d finished files for reuse: %s", len(batch), exc)
            with self._finished_lock:
                self._finished = {**batch, **self._finished}

    def report(self, p: Progress) -> None:
        """Long transfers: bytes, rate and ETA to the worker log and the events stream."""
        self.flush_if_due()  # small files that finished beside a long transfer
        log.info(
            "%s: %s of %s, %.1f MB/s, eta %s",
            p.label,
            p.bytes_done,
            p.bytes_total if p.bytes_total is not None else "?",
            p.rate_bytes_s / 1e6,
            f"{p.eta_s:.0f} s" if p.eta_s is not None else "?",
        )
        self.rt.events.publish(
            EV_PROGRESS,
            self.msg.execution_id,
            TransferProgress(
                execution_id=self.msg.execution_id,
                path=p.label,
                bytes_done=p.bytes_done,
                bytes_total=p.bytes_total,
                rate_bytes_s=round(p.rate_bytes_s, 1),
                eta_s=None if p.eta_s is None else round(p.eta_s, 1),
            ),
            self.msg.execution_id,
            p.label,
            str(p.bytes_done),
        )

    def finished_before(self) -> dict[str, bytes]:
        """Files an earlier delivery of this message finished (one round trip for all)."""
        got = self.rt.redis.hgetall(_done_key(self.msg.execution_id))
        return {(k.decode() if isinstance(k, bytes) else k): v for k, v in got.items()}

    def reuse(self, f: PlannedFile, dest: Path, before: dict[str, bytes]) -> Downloaded | None:
        """A redelivered message: the file is already complete at its final name."""
        raw = before.get(f"{f.input}/{f.rel}")
        if raw is None or not dest.is_file():
            return None
        rec = json.loads(raw)
        if rec.get("url") != f.url or dest.stat().st_size != rec["size"]:
            return None
        info = ObjectInfo(
            key=f.key,
            size=rec["size"],
            etag=rec.get("etag"),
            version=rec.get("version"),
            last_modified=rec.get("last_modified"),
            checksum_note=rec.get("checksum") or "",
        )
        digests = Digests(rec["md5"], rec["sha1"], rec["sha256"], rec["size"])
        return Downloaded(digests, info, 0.0, cached=True)

    # ------------------------------------------------------------------ records
    def record_all(self, fetched: list[_Fetched]) -> list[InputFile]:
        """haul.log lines, change warnings and events of every fetched file, in file order.

        Batched, ``_RECORD_CHUNK`` files at a time: one script pipeline for the change memory,
        one haul.log append, one ``SADD`` of the logged facts and a pipeline of events, instead
        of about six round trips per file (2000 small files spent 1 s of 2 in them). A crash
        inside a chunk can repeat at most that chunk's haul.log lines on redelivery, and memory
        stays bounded whatever the number of files.
        """
        logged_key = f"{KEY_INPUT_LOGGED}:{self.msg.execution_id}"
        members = self.rt.redis.smembers(logged_key)
        logged = {m.decode() if isinstance(m, bytes) else m for m in members}
        files: list[InputFile] = []
        for start in range(0, len(fetched), _RECORD_CHUNK):
            files += self._record_chunk(fetched[start : start + _RECORD_CHUNK], logged, logged_key)
        return files

    def _record_chunk(
        self, fetched: list[_Fetched], logged: set[str], logged_key: str
    ) -> list[InputFile]:
        execution = self.msg.execution_id
        sightings = [
            (item.planned.url, Seen(*self._sums(item.result.digests), execution, now_iso()))
            for item in fetched
        ]
        changes = self.rt.changes.record_many(self.rt.redis, self.msg.project_id, sightings)
        logged_key = f"{KEY_INPUT_LOGGED}:{execution}"
        logged = {
            m.decode() if isinstance(m, bytes) else m for m in self.rt.redis.smembers(logged_key)
        }
        lines: list[str] = []
        facts: list[str] = []
        events: list[Pending] = []
        files: list[InputFile] = []
        for item, (previous, seen) in zip(fetched, changes, strict=True):
            f, result, shown = item.planned, item.result, item.shown_path
            d = result.digests
            fact = f"{f.input}/{f.rel}"
            # haul.log has one line per fact: a redelivered message does not write it again.
            if fact not in logged:
                lines += file_lines(shown, d)
                facts.append(fact)
            ids = (execution, f.input, f.rel)
            events.append((EV_INPUT_DOWNLOADED, execution, self._downloaded(item), ids))
            if previous is not None:
                self.changed.append({"input": f.input, "url": f.url, "path": shown})
                message = change_message(f.url, previous, seen)
                if f"{fact}#warning" not in logged:
                    lines.append(f"{stamp()} {shown}: warning: {message}")
                    facts.append(f"{fact}#warning")
                log.warning("input changed: %s", message)
                changed = InputChanged(
                    execution_id=execution,
                    project_id=self.msg.project_id,
                    input=f.input,
                    url=f.url,
                    message=message,
                    previous=SeenContent(**previous.__dict__),
                    current=SeenContent(**seen.__dict__),
                )
                events.append((EV_INPUT_CHANGED, execution, changed, ids))
            files.append(InputFile(f.rel, shown, d.size, f.url, d))
        if lines:
            self.haul_log.write(lines)
        if facts:
            pipe = self.rt.redis.pipeline()
            pipe.sadd(logged_key, *facts)
            pipe.expire(logged_key, _DONE_TTL_S)
            pipe.execute()
        self.rt.events.publish_many(events)
        return files

    @staticmethod
    def _sums(d: Digests) -> tuple[str, str, str, int]:
        return d.md5, d.sha1, d.sha256, d.size

    def _downloaded(self, item: _Fetched) -> InputDownloaded:
        f, result, d = item.planned, item.result, item.result.digests
        return InputDownloaded(
            execution_id=self.msg.execution_id,
            project_id=self.msg.project_id,
            input=f.input,
            url=f.url,
            path=item.shown_path,
            size=d.size,
            md5=d.md5,
            sha1=d.sha1,
            sha256=d.sha256,
            cached=result.cached,
            seconds=round(result.seconds, 3),
            source=SourceInfo(
                etag=result.info.etag,
                version=result.info.version,
                last_modified=result.info.last_modified,
                checksum=result.info.checksum_note or None,
            ),
        )

    def skipped(self, name: str, url: str, reason: str) -> None:
        self.haul_log.line(f"{self.mount}/{name}", f"skipped {url}: {reason}")
        self.rt.events.publish(
            EV_INPUT_SKIPPED,
            self.msg.execution_id,
            InputSkipped(execution_id=self.msg.execution_id, input=name, url=url, reason=reason),
            self.msg.execution_id,
            name,
            url,
        )

    def sweep_parts(self) -> None:
        """After a failure no ``.haul-part`` may stay behind (contract section 3)."""
        for dirpath, _dirs, files in os.walk(self.inputs_dir):
            for name in files:
                if name.endswith((PART_SUFFIX, PART_RECORD_SUFFIX, PART_RECORD_SUFFIX + ".tmp")):
                    Path(dirpath, name).unlink(missing_ok=True)

    def failed(
        self, exc: HaulError, f: PlannedFile | None, input_name: str | None, url: str | None
    ) -> None:
        self.sweep_parts()
        self.rt.events.publish(
            EV_INPUTS_FAILED,
            self.msg.execution_id,
            InputsFailed(
                execution_id=self.msg.execution_id,
                project_id=self.msg.project_id,
                input=f.input if f else input_name,
                url=f.url if f else url,
                error=ErrorInfo(code=exc.code, message=str(exc)),
            ),
            self.msg.execution_id,
        )
        where = f"{self.mount}/{f.input}/{f.rel}" if f else f"{self.mount}/{input_name or ''}"
        self.haul_log.line(where, f"failed: {exc}")


def inputs_failed(runtime: Runtime, msg: PrepareInputs, exc: HaulError) -> None:
    """Report a failure the job did not report itself: the event, and no part files left."""
    job = _Job(runtime, msg, None)
    if not (job.exec_dir.is_symlink() or job.inputs_dir.is_symlink()):
        job.sweep_parts()
    runtime.events.publish(
        EV_INPUTS_FAILED,
        msg.execution_id,
        InputsFailed(
            execution_id=msg.execution_id,
            project_id=msg.project_id,
            input=None,
            url=None,
            error=ErrorInfo(code=exc.code, message=str(exc)),
        ),
        msg.execution_id,
    )


def prepare_inputs(
    runtime: Runtime,
    msg: PrepareInputs,
    lease_lost: threading.Event | None = None,
    progress: Callable[[Progress], None] | None = None,
) -> dict[str, Any]:
    """``lease_lost`` is set when another worker took the execution over: stop, quietly."""
    started = time.monotonic()
    job = _Job(runtime, msg, progress)
    job.lease_lost = lease_lost
    job.lay_out()

    # Plan every input first: a bad URL fails the task before any byte moves.
    planned: dict[str, list[PlannedFile]] = {}
    skipped: list[dict[str, str]] = []
    for spec in msg.inputs:
        try:
            files, skips = plan_input(runtime, spec, msg.project_id)
        except HaulError as exc:
            job.failed(exc, None, spec.name, exc.url)
            raise InputsFailedError(f"input {spec.name!r}: {exc}") from exc
        planned[spec.name] = files
        for url, reason in skips:
            job.skipped(spec.name, url, reason)
            skipped.append({"input": spec.name, "url": url, "reason": reason})

    results: dict[str, list[InputFile]] = {name: [] for name in planned}
    everything = [f for files in planned.values() for f in files]
    optional = {spec.name: spec.optional for spec in msg.inputs}
    got: dict[int, _Fetched] = {}
    items: list[BatchItem] = []
    positions: list[int] = []
    before = job.finished_before()
    try:
        for i, f in enumerate(everything):
            dest = job.dest(f)
            reused = job.reuse(f, dest, before)
            if reused is not None:
                got[i] = _Fetched(f, reused, job.shown_path(f))
            else:
                items.append(BatchItem(f.source, f.key, dest, f.info, job.shown_path(f)))
                positions.append(i)
    except HaulError as exc:
        job.failed(exc, f, None, None)
        raise InputsFailedError(f"input {f.input!r}: {exc}") from exc

    lock = threading.Lock()
    # Losing the lease stops the transfers like a failure does (they keep their part files).
    stop = lease_lost if lease_lost is not None else threading.Event()
    failures: list[tuple[HaulError, PlannedFile]] = []

    def on_done(res: BatchResult) -> None:
        f = everything[positions[res.index]]
        if res.downloaded is not None:
            job.remember(f, res.downloaded)
            with lock:
                got[positions[res.index]] = _Fetched(f, res.downloaded, job.shown_path(f))
        elif isinstance(res.error, NotFound) and optional[f.input]:
            reason = f"optional input missing: {res.error}"
            job.skipped(f.input, f.url, reason)
            with lock:
                skipped.append({"input": f.input, "url": f.url, "reason": reason})
        elif res.error is not None:
            with lock:
                if not stop.is_set():
                    failures.append((res.error, f))
                    stop.set()

    try:
        download_many(
            items,
            runtime.transfer,
            cache=runtime.cache,
            progress=job.report,
            on_done=on_done,
            stop=stop,
        )
    finally:
        job.flush_finished()
    if failures:
        error, bad = failures[0]
        job.failed(error, bad, None, None)
        raise InputsFailedError(f"input {bad.input!r}: {error}") from error
    if stop.is_set():
        raise LeaseLost(f"execution {msg.execution_id} was taken over by another worker")
    fetched = [got[i] for i in sorted(got)]

    for file, item in zip(job.record_all(fetched), fetched, strict=True):
        results[item.planned.input].append(file)
    write_inputs_json(job.exec_dir / CONFIG_DIR / INPUTS_JSON, results)

    total = sum(item.result.digests.size for item in fetched)
    seconds = round(time.monotonic() - started, 3)
    runtime.events.publish(
        EV_INPUTS_READY,
        msg.execution_id,
        InputsReady(
            execution_id=msg.execution_id,
            project_id=msg.project_id,
            files=len(fetched),
            bytes=total,
            seconds=seconds,
        ),
        msg.execution_id,
    )
    return {
        "status": "ready",
        "execution_id": msg.execution_id,
        "project_id": msg.project_id,
        "files": len(fetched),
        "bytes": total,
        "seconds": seconds,
        "inputs": {
            name: [
                {"name": f.name, "path": f.path, "size": f.size, "sha256": f.digests.sha256}
                for f in files
            ]
            for name, files in results.items()
        },
        "skipped": skipped,
        "changed": job.changed,
    }
