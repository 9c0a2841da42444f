"""The record-batch writer of ``prepare_inputs``: haul.log, change memory and events per file.

Batched, ``_RECORD_CHUNK`` files at a time: one pipeline reads the logged facts and runs the
change memory's scripts, one haul.log append, then the ``SADD`` of the logged facts and the
events are deferred (:meth:`~worker.events.EventPublisher.defer`): they go out with the next
chunk's first publish or with the job's final event, in its round trip. That is two round trips
per chunk instead of about six per file (2000 small files spent 1 s of 2 in them), and one for
the usual single chunk, besides the final event's. What a chunk deferred is sent before the
next chunk writes haul.log, so a crash can still repeat at most one chunk's haul.log lines on
redelivery, and memory stays bounded whatever the number of files.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from worker.constants import EV_INPUT_CHANGED, EV_INPUT_DOWNLOADED, KEY_INPUT_LOGGED
from worker.events import Pending, now_iso
from worker.hashing import Digests
from worker.models import InputChanged, InputDownloaded, PrepareInputs, SeenContent, SourceInfo
from worker.observability import metrics
from worker.pipeline.plan import PlannedFile
from worker.pipeline.runtime import Runtime
from worker.records.change_memory import Seen, change_message
from worker.records.haul_log import HaulLog, file_lines, stamp
from worker.records.inputs_json import InputFile
from worker.retry import store_type_of
from worker.transfer.download import Downloaded

log = logging.getLogger("worker.pipeline.prepare")
#: files whose haul.log lines, change records and events go out together
_RECORD_CHUNK = 500
_LOGGED_TTL_S = 30 * 24 * 3600


@dataclass(frozen=True)
class Fetched:
    """One input file that is complete at its final name (fetched now or earlier)."""

    planned: PlannedFile
    result: Downloaded
    shown_path: str


class InputRecorder:
    """Writes the records of an execution's fetched files, in file order."""

    def __init__(self, runtime: Runtime, msg: PrepareInputs, haul_log: HaulLog) -> None:
        self.rt = runtime
        self.msg = msg
        self.haul_log = haul_log
        #: every changed input seen so far: {input, url, path}
        self.changed: list[dict[str, str]] = []

    def record_all(self, fetched: list[Fetched]) -> list[InputFile]:
        """haul.log lines, change warnings and events of every fetched file, in file order."""
        files: list[InputFile] = []
        for start in range(0, len(fetched), _RECORD_CHUNK):
            if start:
                self.rt.events.flush()  # the previous chunk's facts, before its lines repeat
            files += self._record_chunk(fetched[start : start + _RECORD_CHUNK])
        return files

    def _record_chunk(self, fetched: list[Fetched]) -> list[InputFile]:
        execution = self.msg.execution_id
        sightings = [
            (item.planned.url, Seen(*_sums(item.result.digests), execution, now_iso()))
            for item in fetched
        ]
        logged_key = f"{KEY_INPUT_LOGGED}:{execution}"
        (members,), changes = self.rt.changes.record_many(
            self.rt.redis,
            self.msg.project_id,
            sightings,
            first=lambda pipe: pipe.smembers(logged_key),
        )
        logged = {m.decode() if isinstance(m, bytes) else m for m in members}
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
            # its type, not its name: an undeclared bucket's source is named by its URL
            metrics.transferred("in", store_type_of(f.source), d.size)
            if previous is not None:
                metrics.input_changed()
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
        self.rt.events.defer(events, [_Logged(logged_key, facts)] if facts else [])
        return files

    def _downloaded(self, item: Fetched) -> InputDownloaded:
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
                version=result.info.shown_version,
                last_modified=result.info.last_modified,
                checksum=result.info.checksum_note or None,
            ),
        )


@dataclass(frozen=True)
class _Logged:
    """The facts whose haul.log lines were written, noted in the next event pipeline."""

    key: str
    facts: list[str]

    def board(self, pipe: Any) -> None:
        pipe.sadd(self.key, *self.facts)
        pipe.expire(self.key, _LOGGED_TTL_S)

    def landed(self) -> None:
        return None


def _sums(d: Digests) -> tuple[str, str, str, int]:
    return d.md5, d.sha1, d.sha256, d.size
