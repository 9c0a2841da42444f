"""``haul.prepare_inputs``: download, hash, record and lay out an execution's inputs.

The orchestration only: planning is :mod:`worker.pipeline.plan`, the redelivery records
:mod:`worker.records.finished`, the per-file records :mod:`worker.pipeline.recording`. The job
protocol (:mod:`worker.pipeline.protocol`) publishes ``haul.inputs.ready`` from the returned
:class:`Outcome` and ``haul.inputs.failed`` (built by :func:`inputs_failed`) for any failure.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from pathlib import Path

from worker.constants import (
    CONFIG_DIR,
    EV_INPUT_SKIPPED,
    EV_INPUTS_FAILED,
    EV_INPUTS_READY,
    EV_PROGRESS,
    HAUL_LOG,
    INPUTS_DIR,
    INPUTS_JSON,
    OUTPUTS_DIR,
    PART_RECORD_SUFFIX,
    PART_SUFFIX,
)
from worker.errors import (
    DestinationError,
    DiskFullError,
    HaulError,
    LeaseLost,
    NotFound,
    UnsafePathError,
)
from worker.events import Pending
from worker.models import (
    ErrorInfo,
    InputsFailed,
    InputSkipped,
    InputsReady,
    PrepareInputs,
    TransferProgress,
)
from worker.paths import clean_relative, safe_join
from worker.pipeline.plan import PlannedFile, plan_input
from worker.pipeline.protocol import Outcome
from worker.pipeline.recording import Fetched, InputRecorder
from worker.pipeline.runtime import Runtime
from worker.records.finished import FinishedFiles, reusable
from worker.records.haul_log import HaulLog
from worker.records.inputs_json import InputFile, write_inputs_json
from worker.transfer.batch import BatchItem, BatchResult, download_many
from worker.transfer.download import Downloaded
from worker.transfer.progress import Progress

log = logging.getLogger(__name__)


class InputsFailedError(HaulError):
    """One input failed; the event names it (``input``, ``url``) with its cause's code."""

    def __init__(
        self, cause: HaulError, input_name: str | None, url: str | None, where: str
    ) -> None:
        super().__init__(f"input {input_name!r}: {cause}" if input_name else str(cause))
        self.cause = cause
        self.code = cause.code
        self.input = input_name
        self.url = url
        #: the path haul.log names in its ``failed:`` line
        self.where = where


def _make_folder(folder: Path, shown: str) -> None:
    """mkdir -p; a file planted where a folder must be (or no permission) is a
    DestinationError naming what could not be laid out, not an unexpected OSError."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(f"no space left to lay out {shown!r}") from None
        raise DestinationError(
            f"cannot make the folder for {shown!r}: {exc.strerror or exc}"
        ) from None


class _Job:
    def __init__(
        self, runtime: Runtime, msg: PrepareInputs, lease_lost: threading.Event | None = None
    ) -> None:
        self.rt = runtime
        self.msg = msg
        self.exec_dir = runtime.execution_dir(msg.execution_id)
        self.inputs_dir = self.exec_dir / INPUTS_DIR
        self.haul_log = HaulLog(self.exec_dir / HAUL_LOG)
        self.mount = runtime.settings.inputs_mount.rstrip("/")
        self._checked: set[Path] = set()
        # Once another worker took the execution over, no more finished-file records.
        self.finished = FinishedFiles(runtime.redis, msg.execution_id, lease_lost)

    # ------------------------------------------------------------------ layout
    def lay_out(self) -> None:
        for folder in (
            self.exec_dir,
            *(self.exec_dir / s for s in (INPUTS_DIR, OUTPUTS_DIR, CONFIG_DIR)),
        ):
            _make_folder(folder, folder.name)
            if folder.is_symlink():
                raise UnsafePathError(f"{folder} is a symlink; haul writes only into real folders")

    def dest(self, f: PlannedFile) -> Path:
        # Checked against inputs/ itself, so a symlinked inputs/<name> cannot lead out either.
        rel = f"{f.input}/{f.rel}"
        target = self.inputs_dir.joinpath(*clean_relative(rel).parts)
        if target.parent in self._checked:
            return target  # the folder was made and checked for an earlier file
        _make_folder(safe_join(self.inputs_dir, rel).parent, rel)
        # The folders exist now; check again that none of them is a symlink leading out.
        checked = safe_join(self.inputs_dir, rel)
        self._checked.add(checked.parent)
        return checked

    def shown_path(self, f: PlannedFile) -> str:
        return f"{self.mount}/{f.input}/{f.rel}"

    def failure(self, exc: HaulError, f: PlannedFile | None, name: str | None) -> InputsFailedError:
        """The error that fails the task for ``exc`` in one file (or one input's plan)."""
        where = self.shown_path(f) if f else f"{self.mount}/{name or ''}"
        return InputsFailedError(exc, f.input if f else name, f.url if f else exc.url, where)

    # ------------------------------------------------------------------ one file
    def remember(self, f: PlannedFile, result: Downloaded) -> None:
        """Note a finished file, so a redelivered message reuses it instead of fetching again."""
        self.finished.note(f"{f.input}/{f.rel}", f.url, result.digests, result.info)

    def reuse(self, f: PlannedFile, dest: Path, before: dict[str, bytes]) -> Downloaded | None:
        """A redelivered message: the file is already complete at its final name."""
        found = reusable(before, f"{f.input}/{f.rel}", f.url, f.key, dest)
        if found is None:
            return None
        digests, info = found
        return Downloaded(digests, info, 0.0, cached=True)

    def report(self, p: Progress) -> None:
        """Long transfers: bytes, rate and ETA to the worker log and the events stream."""
        self.finished.flush_if_due()  # small files that finished beside a long transfer
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


def inputs_failed(runtime: Runtime, msg: PrepareInputs, exc: HaulError) -> Pending:
    """``haul.inputs.failed`` for any failure of the job (the runner publishes it).

    Also the job's cleanup: no part file stays, and haul.log says what failed. Neither is done
    through a symlinked execution folder (that would write outside it), and neither may hide
    the failure itself: a full disk is why many jobs fail.
    """
    cause = exc.cause if isinstance(exc, InputsFailedError) else exc
    try:
        job = _Job(runtime, msg)
    except UnsafePathError:
        job = None  # the execution folder itself is a symlink (often the very failure)
    where = exc.where if isinstance(exc, InputsFailedError) else f"{job.mount if job else ''}/"
    if job is not None and not (job.exec_dir.is_symlink() or job.inputs_dir.is_symlink()):
        try:
            job.sweep_parts()
            if job.exec_dir.is_dir():
                job.haul_log.line(where, f"failed: {cause}")
        except (HaulError, OSError) as err:
            log.warning("could not note the failure in %s: %s", job.exec_dir, err)
    failed = InputsFailed(
        execution_id=msg.execution_id,
        project_id=msg.project_id,
        input=exc.input if isinstance(exc, InputsFailedError) else None,
        url=exc.url if isinstance(exc, InputsFailedError) else None,
        error=ErrorInfo(code=cause.code, message=str(cause)),
    )
    return (EV_INPUTS_FAILED, msg.execution_id, failed, (msg.execution_id,))


def prepare_inputs(
    runtime: Runtime, msg: PrepareInputs, lease_lost: threading.Event | None = None
) -> Outcome:
    """``lease_lost`` is set when another worker took the execution over: stop, quietly."""
    started = time.monotonic()
    job = _Job(runtime, msg, lease_lost)
    job.lay_out()

    # Plan every input first: a bad URL fails the task before any byte moves.
    planned: dict[str, list[PlannedFile]] = {}
    skipped: list[dict[str, str]] = []
    for spec in msg.inputs:
        try:
            files, skips = plan_input(runtime, spec, msg.project_id)
        except HaulError as exc:
            raise job.failure(exc, None, spec.name) from exc
        planned[spec.name] = files
        for url, reason in skips:
            job.skipped(spec.name, url, reason)
            skipped.append({"input": spec.name, "url": url, "reason": reason})

    everything = [f for files in planned.values() for f in files]
    got, failures = _fetch(
        job, everything, {spec.name: spec.optional for spec in msg.inputs}, skipped, lease_lost
    )
    if failures:
        error, bad = failures[0]
        raise job.failure(error, bad, None) from error
    if lease_lost is not None and lease_lost.is_set():
        raise LeaseLost(f"execution {msg.execution_id} was taken over by another worker")
    fetched = [got[i] for i in sorted(got)]

    recorder = InputRecorder(runtime, msg, job.haul_log)
    results: dict[str, list[InputFile]] = {name: [] for name in planned}
    for file, item in zip(recorder.record_all(fetched), fetched, strict=True):
        results[item.planned.input].append(file)
    write_inputs_json(job.exec_dir / CONFIG_DIR / INPUTS_JSON, results)

    total = sum(item.result.digests.size for item in fetched)
    seconds = round(time.monotonic() - started, 3)
    ready = InputsReady(
        execution_id=msg.execution_id,
        project_id=msg.project_id,
        files=len(fetched),
        bytes=total,
        seconds=seconds,
    )
    summary = {
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
        "changed": recorder.changed,
    }
    return Outcome(summary, (EV_INPUTS_READY, msg.execution_id, ready, (msg.execution_id,)))


def _fetch(
    job: _Job,
    everything: list[PlannedFile],
    optional: dict[str, bool],
    skipped: list[dict[str, str]],
    lease_lost: threading.Event | None,
) -> tuple[dict[int, Fetched], list[tuple[HaulError, PlannedFile]]]:
    """Every planned file, reused from an earlier delivery or downloaded; the first failures."""
    got: dict[int, Fetched] = {}
    items: list[BatchItem] = []
    positions: list[int] = []
    before = job.finished.load()
    for i, f in enumerate(everything):
        try:
            dest = job.dest(f)
        except HaulError as exc:
            raise job.failure(exc, f, None) from exc
        reused = job.reuse(f, dest, before)
        if reused is not None:
            got[i] = Fetched(f, reused, job.shown_path(f))
        else:
            items.append(BatchItem(f.source, f.key, dest, f.info, job.shown_path(f)))
            positions.append(i)

    lock = threading.Lock()
    # Losing the lease stops the transfers like a failure does (they keep their part files).
    stop = lease_lost if lease_lost is not None else threading.Event()
    failures: list[tuple[HaulError, PlannedFile]] = []

    def on_done(res: BatchResult) -> None:
        f = everything[positions[res.index]]
        if res.downloaded is not None:
            job.remember(f, res.downloaded)
            with lock:
                got[positions[res.index]] = Fetched(f, res.downloaded, job.shown_path(f))
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
            job.rt.transfer,
            cache=job.rt.cache,
            progress=job.report,
            on_done=on_done,
            stop=stop,
        )
    finally:
        # The last records go out with the job's next events (its final or failure event).
        job.rt.events.defer([], [job.finished])
    return got, failures
