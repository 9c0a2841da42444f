"""``haul.watch_outputs``: store each output the moment the program marks it done (contract 9).

A file under ``outputs/`` is *done* when it is a regular file (never a symlink: the scan is
``store_outputs``' own, which refuses and never follows them) with no write bit for anyone
(``chmod 0444``), and no process has it open for writing (:mod:`worker.live.writers`: a file
made read-only while still being written waits for its close). A done file is stored exactly as
``store_outputs`` stores it (the same job code: same datum id, key, records and events) and
noted as a live record; a sidecar written or changed after its file was stored updates the
datum's metadata (tags, alias, dataset versions) and publishes ``haul.output.stored`` again with
the same id. Sidecars are never stored live as outputs of their own.

**Rounds.** A watch is a chain of short rounds, each one task of at most ``watch_round_s`` (20 s): a
round scans, stores what is done, waits for inotify events (or rescans, see
:mod:`worker.live.notify`), and at the end of its time sends the next round to ``haul.watch``
and finishes. So a watch never occupies a worker process for long (with a plain
``celery worker -Q ...,haul.watch --concurrency 1`` a ``store_outputs`` waits at most one
round), Celery's time limits and the broker's visibility timeout never see a day-long task,
and a worker that dies mid-round loses nothing: its unacknowledged round comes back and
rescans. Only one round of an execution runs: each round names the round that sent it, and a
Lua script lets a round run only if it is the current one or the successor of the current one,
so a redelivered old round finds itself superseded and ends.

**Ending.** ``store_outputs`` sets a stop key when it begins, and each file is stored under a
per-file lock, so a file is never sent twice by the two; the watch ends within
:data:`POLL_S`. It also ends when ``watch_max_s`` has passed since its first round, or when the
execution folder is gone (an execution folder that does not exist yet when the watch starts
is waited for: an orchestrator may send the watch before ``prepare_inputs`` has made it, and
the two run on different queues; only a folder that a round has seen, then misses, is gone).
A watch holds only its own lease (``haul.watch_outputs:<execution>``), never
one that delays ``store_outputs``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.constants import METADATA_SUFFIX, OUTPUTS_DIR
from worker.errors import HaulError, LeaseLost
from worker.live.notify import Notifier
from worker.live.writers import open_for_writing
from worker.models import StoreOutputs, WatchOutputs
from worker.pipeline.outputs import Candidate, OutputsJob, scan
from worker.pipeline.protocol import REPEAT_STATUS, Delivery, Outcome, current_delivery
from worker.pipeline.runtime import Runtime
from worker.records.live import FileSignature, LiveFiles, LiveRecord
from worker.stores.base import Store

log = logging.getLogger(__name__)

#: how often a round checks whether the watch should end
POLL_S = 0.5
#: a full rescan at least this often (every time when there is no inotify)
RESCAN_S = 2.0


@dataclass
class _Watch:
    runtime: Runtime
    msg: WatchOutputs
    live: LiveFiles
    job: OutputsJob
    store: Store
    stored: int = 0
    #: the execution folder existed at some round (kept in Redis across rounds)
    seen: bool = False

    def ended(self, exec_dir: Path, started: float) -> str | None:
        if self.live.stopped():
            return "store_outputs began"
        if exec_dir.is_dir():
            if not self.seen:
                self.live.saw_folder()
                self.seen = True
        elif self.seen:
            return "the execution folder is gone"
        if time.time() - started >= self.runtime.settings.watch_max_s:
            return "watch_max_s reached"
        return None

    def store_done(self, outputs: Path) -> None:
        """Store every done file not stored yet; refresh the metadata of changed sidecars."""
        candidates, _refused = scan(outputs)  # store_outputs reports refusals, once
        records = self.live.all()
        todo: list[tuple[Candidate, os.stat_result]] = []
        for c in candidates:
            if c.rel.endswith(METADATA_SUFFIX):
                continue  # a sidecar without its file (yet) is stored by store_outputs
            try:
                st = os.lstat(c.path)
            except FileNotFoundError:
                continue
            if st.st_mode & 0o222:
                continue  # still writable: not done
            record = records.get(c.rel)
            unchanged = record is not None and record.file == FileSignature.of(st)
            if unchanged and record is not None and record.sidecar == _signature(c.sidecar):
                continue
            todo.append((c, st))
        if not todo:
            return
        idents = {(st.st_dev, st.st_ino) for _, st in todo}
        sidecars = {c.sidecar: os.lstat(c.sidecar) for c, _ in todo if c.sidecar is not None}
        idents |= {(st.st_dev, st.st_ino) for st in sidecars.values()}
        writing = open_for_writing(idents)
        for c, st in todo:
            if (st.st_dev, st.st_ino) in writing:
                continue  # made read-only but still open for writing: stored once closed
            if c.sidecar is not None:
                side = sidecars[c.sidecar]
                if (side.st_dev, side.st_ino) in writing:
                    if c.rel in records:
                        continue  # the sidecar's close updates the datum
                    # Stored now without the half-written sidecar; its close updates the datum.
                    c = Candidate(c.rel, c.path, None)
            if not self.store_file(c, st):
                return

    def store_file(self, c: Candidate, st: os.stat_result) -> bool:
        """Store (or refresh) one done file; False when the watch has to end."""
        with self.live.file_lock(c.rel):
            if self.live.stopped():
                return False
            record = self.live.get(c.rel)
            sidecar = _signature(c.sidecar)
            try:
                if record is not None and record.file == FileSignature.of(st):
                    self.job.reuse(self.store, c, record.datum_id)
                    did = record.datum_id
                else:
                    one = self.job.store_one(self.store, c)
                    if one is None:
                        return True
                    did = one["datum_id"]
                    self.stored += 1
            except HaulError as exc:
                # The next scan tries again; store_outputs stores it at the latest.
                log.warning("live output %s not stored yet: %s", c.rel, exc)
                return True
            self.live.put(c.rel, LiveRecord(did, FileSignature.of(st), sidecar))
        return True


def _signature(path: Path | None) -> FileSignature | None:
    if path is None:
        return None
    try:
        return FileSignature.of(os.lstat(path))
    except FileNotFoundError:
        return None


def watch_outputs(
    runtime: Runtime, msg: WatchOutputs, lease_lost: threading.Event | None = None
) -> Outcome:
    """One round of the watch; ``status`` ``watching`` makes the runner send the next."""
    delivery = current_delivery() or Delivery(uuid.uuid4().hex)
    return Outcome(_round(runtime, msg, lease_lost, delivery))


def _round(
    runtime: Runtime, msg: WatchOutputs, lease_lost: threading.Event | None, delivery: Delivery
) -> dict[str, Any]:
    summary: dict[str, Any] = {"execution_id": msg.execution_id, "project_id": msg.project_id}
    live = LiveFiles(runtime.redis, msg.execution_id)
    if not live.take_round(delivery.message_id, delivery.sent_by):
        return {**summary, "status": "superseded", "stored": 0}
    started = live.started_at()
    exec_dir = runtime.execution_dir(msg.execution_id)
    outputs = exec_dir / OUTPUTS_DIR
    job = OutputsJob(
        runtime,
        StoreOutputs(execution_id=msg.execution_id, project_id=msg.project_id, store=msg.store),
    )
    store = runtime.sources.store(job.store_name)
    watch = _Watch(runtime, msg, live, job, store, seen=live.folder_seen())
    round_ends = time.monotonic() + runtime.settings.watch_round_s
    notifier: Notifier | None = None
    try:
        scan_now = True
        while True:
            reason = watch.ended(exec_dir, started)
            if reason is not None:
                log.info("watch of %s ended: %s", msg.execution_id, reason)
                return {**summary, "status": "ended", "reason": reason, "stored": watch.stored}
            if lease_lost is not None and lease_lost.is_set():
                raise LeaseLost(f"the watch of {msg.execution_id} was taken over")
            if notifier is None and outputs.is_dir() and not outputs.is_symlink():
                notifier = Notifier(outputs, RESCAN_S)
                scan_now = True
            if scan_now and notifier is not None:
                watch.store_done(outputs)
            left = round_ends - time.monotonic()
            if left <= 0:
                return {**summary, "status": REPEAT_STATUS, "stored": watch.stored}
            if notifier is None:
                time.sleep(min(left, POLL_S))  # outputs/ does not exist yet
                continue
            scan_now = notifier.wait(min(left, POLL_S))
    finally:
        if notifier is not None:
            notifier.close()
