"""Events exactly as the worker builds them (``worker.events.build_event``), with chosen times."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from dashboard.parse import BadEntry, Event, parse_entry
from worker import constants as c
from worker import models as m
from worker.events import build_event

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
_stream = itertools.count(1)


def raw(
    event_type: str, data: Any, *identity: str, subject: str | None = None, at: float = 0.0
) -> dict[str, Any]:
    """One CloudEvent dict; ``at`` is seconds after T0."""
    execution = getattr(data, "execution_id", None)
    ev = build_event(event_type, subject or execution, data, identity or (str(next(_stream)),))
    ev["time"] = (
        (T0 + timedelta(seconds=at)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )
    return ev


def entry(ev: dict[str, Any]) -> Event | BadEntry:
    return parse_entry(f"{next(_stream)}-0", {"event": json.dumps(ev)})


def hashes(seed: str) -> dict[str, str]:
    import hashlib

    b = seed.encode()
    return {
        "md5": hashlib.md5(b).hexdigest(),
        "sha1": hashlib.sha1(b).hexdigest(),
        "sha256": hashlib.sha256(b).hexdigest(),
    }


def downloaded(
    execution: str,
    project: str,
    url: str,
    content: str,
    at: float = 0.0,
    name: str = "data",
    size: int = 10,
) -> dict[str, Any]:
    data = m.InputDownloaded(
        execution_id=execution, project_id=project, input=name, url=url,
        path=f"/valohai/inputs/{name}/{url.rsplit('/', 1)[-1]}", size=size, cached=False,
        seconds=0.1, source=m.SourceInfo(etag='"e1"'), **hashes(content),
    )  # fmt: skip
    return raw(c.EV_INPUT_DOWNLOADED, data, execution, name, url, at=at)


def changed(
    execution: str,
    project: str,
    url: str,
    before: str,
    after: str,
    previous_execution: str,
    at: float = 0.0,
    name: str = "data",
) -> dict[str, Any]:
    seen = {"size": 10, "seen_at": "2026-01-01T00:00:00Z"}
    data = m.InputChanged(
        execution_id=execution, project_id=project, input=name, url=url,
        message=f"{url} changed since {previous_execution}",
        previous=m.SeenContent(execution_id=previous_execution, **hashes(before), **seen),
        current=m.SeenContent(execution_id=execution, **hashes(after), **seen),
    )  # fmt: skip
    return raw(c.EV_INPUT_CHANGED, data, execution, name, url, at=at)


def ready(execution: str, project: str, files: int, size: int, at: float = 0.0) -> dict[str, Any]:
    data = m.InputsReady(execution_id=execution, project_id=project, files=files, bytes=size,
                         seconds=1.0)  # fmt: skip
    return raw(c.EV_INPUTS_READY, data, execution, at=at)


def inputs_failed(execution: str, project: str, url: str, at: float = 0.0) -> dict[str, Any]:
    data = m.InputsFailed(
        execution_id=execution,
        project_id=project,
        input="data",
        url=url,
        error=m.ErrorInfo(code="not_found", message=f"{url}: 404"),
    )
    return raw(c.EV_INPUTS_FAILED, data, execution, at=at)


def stored(
    execution: str,
    project: str,
    datum_id: str,
    path: str,
    content: str,
    at: float = 0.0,
    **extra: Any,
) -> dict[str, Any]:
    h = hashes(content)
    data = m.OutputStored(
        execution_id=execution, project_id=project, datum_id=datum_id, path=path,
        uri=f"datum://{datum_id}", key=f"data/{project}/{h['sha256'][:2]}/{h['sha256']}/{path}",
        size=len(content), deduplicated=False, **h, **extra,
    )  # fmt: skip
    return raw(c.EV_OUTPUT_STORED, data, execution, datum_id, at=at)


def outputs_stored(
    execution: str, project: str, files: int, size: int, at: float = 0.0
) -> dict[str, Any]:
    data = m.OutputsStored(execution_id=execution, project_id=project, files=files, bytes=size,
                           seconds=1.0)  # fmt: skip
    return raw(c.EV_OUTPUTS_STORED, data, execution, at=at)
