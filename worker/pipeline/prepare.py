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
from worker.events import now_iso
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
from worker.paths import safe_join
from worker.pipeline.plan import PlannedFile, plan_input
from worker.pipeline.runtime import Runtime
from worker.records.change_memory import Seen, change_message
from worker.records.haul_log import HaulLog
from worker.records.inputs_json import InputFile, write_inputs_json
from worker.stores.base import ObjectInfo
from worker.transfer.batch import BatchItem, BatchResult, download_many
from worker.transfer.download import Downloaded
from worker.transfer.progress import Progress

log = logging.getLogger(__name__)
_DONE_TTL_S = 30 * 24 * 3600


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
        safe_join(self.inputs_dir, rel).parent.mkdir(parents=True, exist_ok=True)
        # The folders exist now; check again that none of them is a symlink leading out.
        return safe_join(self.inputs_dir, rel)

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
        pipe = self.rt.redis.pipeline()
        pipe.hset(_done_key(self.msg.execution_id), f"{f.input}/{f.rel}", json.dumps(record))
        pipe.expire(_done_key(self.msg.execution_id), _DONE_TTL_S)
        pipe.execute()

    def report(self, p: Progress) -> None:
        """Long transfers: bytes, rate and ETA to the worker log and the events stream."""
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

    def reuse(self, f: PlannedFile, dest: Path) -> Downloaded | None:
        """A redelivered message: the file is already complete at its final name."""
        raw = self.rt.redis.hget(_done_key(self.msg.execution_id), f"{f.input}/{f.rel}")
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
    def log_once(self, fact: str, write: Callable[[], None]) -> None:
        """haul.log has one line per fact: a redelivered message does not write it again."""
        key = f"{KEY_INPUT_LOGGED}:{self.msg.execution_id}"
        if self.rt.redis.sismember(key, fact):
            return
        write()
        pipe = self.rt.redis.pipeline()
        pipe.sadd(key, fact)
        pipe.expire(key, _DONE_TTL_S)
        pipe.execute()

    def record(self, fetched: _Fetched) -> InputFile:
        f, result, shown = fetched.planned, fetched.result, fetched.shown_path
        d = result.digests
        self.log_once(f"{f.input}/{f.rel}", lambda: self.haul_log.file(shown, d))
        ids = (self.msg.execution_id, f.input, f.rel)
        self.rt.events.publish(
            EV_INPUT_DOWNLOADED,
            self.msg.execution_id,
            InputDownloaded(
                execution_id=self.msg.execution_id,
                project_id=self.msg.project_id,
                input=f.input,
                url=f.url,
                path=shown,
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
            ),
            *ids,
        )
        self.check_change(f, d, shown)
        return InputFile(f.rel, shown, d.size, f.url, d)

    def check_change(self, f: PlannedFile, d: Digests, shown: str) -> None:
        seen = Seen(d.md5, d.sha1, d.sha256, d.size, self.msg.execution_id, now_iso())
        previous, seen = self.rt.changes.record(self.msg.project_id, f.url, seen)
        if previous is None:
            return
        self.changed.append({"input": f.input, "url": f.url, "path": shown})
        message = change_message(f.url, previous, seen)
        self.log_once(
            f"{f.input}/{f.rel}#warning", lambda: self.haul_log.line(shown, f"warning: {message}")
        )
        log.warning("input changed: %s", message)
        self.rt.events.publish(
            EV_INPUT_CHANGED,
            self.msg.execution_id,
            InputChanged(
                execution_id=self.msg.execution_id,
                project_id=self.msg.project_id,
                input=f.input,
                url=f.url,
                message=message,
                previous=SeenContent(**previous.__dict__),
                current=SeenContent(**seen.__dict__),
            ),
            self.msg.execution_id,
            f.input,
            f.rel,
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
    job.lay_out()

    # Plan every input first: a bad URL fails the task before any byte moves.
    planned: dict[str, list[PlannedFile]] = {}
    skipped: list[dict[str, str]] = []
    for spec in msg.inputs:
        try:
            files, skips = plan_input(runtime, spec)
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
    try:
        for i, f in enumerate(everything):
            dest = job.dest(f)
            reused = job.reuse(f, dest)
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

    download_many(
        items,
        runtime.transfer,
        cache=runtime.cache,
        progress=job.report,
        on_done=on_done,
        stop=stop,
    )
    if failures:
        error, bad = failures[0]
        job.failed(error, bad, None, None)
        raise InputsFailedError(f"input {bad.input!r}: {error}") from error
    if stop.is_set():
        raise LeaseLost(f"execution {msg.execution_id} was taken over by another worker")
    fetched = [got[i] for i in sorted(got)]

    for item in fetched:
        results[item.planned.input].append(job.record(item))
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
