"""``haul.purge``: remove datums on explicit request, keeping content others still use."""

from __future__ import annotations

import threading
from functools import partial
from typing import Any

from worker.constants import EV_DATUM_PURGED
from worker.errors import NotFound
from worker.events import now_iso
from worker.models import DatumPurged, Purge
from worker.pipeline.protocol import Outcome
from worker.pipeline.runtime import Runtime
from worker.retry import store_type_of


def purge(runtime: Runtime, msg: Purge, lease_lost: threading.Event | None = None) -> Outcome:
    """Purge each datum of the project; the summary says which ids were unknown."""
    purged: list[dict[str, Any]] = []
    unknown: list[str] = []
    for datum_id in dict.fromkeys(msg.datum_ids):
        try:
            datum = runtime.datums.get(datum_id)
        except NotFound:
            unknown.append(datum_id)
            continue
        if datum.project_id != msg.project_id:
            # Another project's datum is not this project's to purge; say so like a miss.
            unknown.append(datum_id)
            continue
        store = runtime.sources.store(datum.store)
        with runtime.datums.content_lock(datum.store, datum.key):
            updated, live = runtime.datums.mark_purged(datum, now_iso())
            content_removed = live == 0
            retry = runtime.transfer.policy.call
            kind = store_type_of(store)
            if content_removed:
                retry(
                    partial(store.delete, datum.key), store_type=kind, what=f"deleting {datum.key}"
                )
            record = partial(runtime.datums.write_store_record, store, updated)
            retry(record, store_type=kind, what=f"datum record {datum_id}")
        runtime.events.publish(
            EV_DATUM_PURGED,
            datum.execution_id,  # the execution that produced the datum
            DatumPurged(
                project_id=msg.project_id,
                datum_id=datum_id,
                key=datum.key,
                content_removed=content_removed,
            ),
            msg.project_id,
            datum_id,
        )
        purged.append({"datum_id": datum_id, "key": datum.key, "content_removed": content_removed})
    summary = {
        "status": "purged",
        "project_id": msg.project_id,
        "purged": purged,
        "unknown": unknown,
    }
    return Outcome(summary)
