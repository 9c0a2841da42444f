"""Events as readable lines: ``HH:MM:SS type subject: summary`` (``haul events``, ``--wait``)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, TextIO

from worker.sizes import format_size


def _clock(event: dict[str, Any]) -> str:
    """The event's time as local ``HH:MM:SS`` (events carry UTC ISO-8601)."""
    raw = str(event.get("time") or "")
    try:
        return datetime.fromisoformat(raw.replace("Z", "+00:00")).astimezone().strftime("%H:%M:%S")
    except ValueError:
        return "--:--:--"


def _short(digest: Any) -> str:
    return f"{str(digest)[:12]}…" if digest else "?"


def _size(value: Any) -> str:
    return format_size(int(value)) if isinstance(value, int) else "? B"


def _error(data: dict[str, Any]) -> str:
    err = data.get("error") or {}
    return f"{err.get('code', 'error')}: {err.get('message', '')}"


def _summary(kind: str, d: dict[str, Any]) -> str:
    if kind == "input.downloaded":
        cached = " (already here, not downloaded again)" if d.get("cached") else ""
        return f"{d.get('path')} {_size(d.get('size'))} sha256 {d.get('sha256')}{cached}"
    if kind == "input.changed":
        return f"warning: {d.get('message')}"
    if kind == "input.skipped":
        return f"input {d.get('input')}: skipped {d.get('url')}: {d.get('reason')}"
    if kind in ("inputs.ready", "outputs.stored"):
        return f"{d.get('files')} file(s), {_size(d.get('bytes'))} in {d.get('seconds')} s"
    if kind == "inputs.failed":
        where = f"input {d.get('input')}" if d.get("input") else "inputs"
        url = f" ({d.get('url')})" if d.get("url") else ""
        return f"{where}{url} failed: {_error(d)}"
    if kind == "output.stored":
        dedup = ", already stored (deduplicated)" if d.get("deduplicated") else ""
        return (
            f"{d.get('path')} -> {d.get('uri')} ({_size(d.get('size'))}, "
            f"sha256 {_short(d.get('sha256'))}, datum {d.get('datum_id')}{dedup})"
        )
    if kind == "output.refused":
        return f"{d.get('path')} refused: {d.get('reason')}"
    if kind == "outputs.failed":
        return f"outputs failed: {_error(d)}"
    if kind == "datum.purged":
        kept = "content removed" if d.get("content_removed") else "content kept (still referenced)"
        return f"datum {d.get('datum_id')} purged, {kept}"
    if kind == "message.rejected":
        problems = "; ".join(
            f"{e.get('field') or '(message)'}: {e.get('problem')}" for e in d.get("errors") or []
        )
        return f"{d.get('task')} message rejected: {problems or d.get('reason')}"
    if kind == "transfer.progress":
        total = d.get("bytes_total")
        done = int(d.get("bytes_done") or 0)
        pct = f" ({100 * done // total}%)" if isinstance(total, int) and total > 0 else ""
        of = f" of {_size(total)}" if isinstance(total, int) else ""
        eta = f", about {round(d['eta_s'])} s left" if d.get("eta_s") is not None else ""
        rate = _size(int(d.get("rate_bytes_s") or 0))
        return f"{d.get('path')} {_size(done)}{of}{pct} at {rate}/s{eta}"
    return json.dumps(d, ensure_ascii=False)[:200]


def format_event(event: dict[str, Any]) -> str:
    """One readable line: ``HH:MM:SS type subject: summary``."""
    kind = str(event.get("type", "?")).removeprefix("haul.")
    data = event.get("data") if isinstance(event.get("data"), dict) else {}
    assert isinstance(data, dict)
    subject = event.get("subject") or data.get("project_id") or "-"
    return f"{_clock(event)} {kind} {subject}: {_summary(kind, data)}"


def print_event(event: dict[str, Any], as_json: bool, out: TextIO) -> None:
    """The event as one JSON line (``--json``) or one readable line."""
    if as_json:
        out.write(json.dumps(event, ensure_ascii=False, separators=(",", ":")) + "\n")
    else:
        out.write(format_event(event) + "\n")
    out.flush()
