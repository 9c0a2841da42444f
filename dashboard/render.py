"""Jinja2 filters: sizes, times and links. Links quote every part that came from an event."""

from __future__ import annotations

from urllib.parse import quote, urlencode

import jinja2

DASH = "\N{EN DASH}"


def size(value: int | None) -> str:
    """Decimal units with one decimal, as haul.log writes them (``28.9 kB``; ``512 B``)."""
    if value is None:
        return DASH
    if value < 1000:
        return f"{value} B"
    amount = float(value)
    for unit in ("kB", "MB", "GB", "TB", "PB"):
        amount /= 1000
        if amount < 1000 or unit == "PB":
            return f"{amount:.1f} {unit}"
    raise AssertionError("unreachable")


def when(value: str | None) -> str:
    """``2026-01-02T03:04:05.123Z`` -> ``2026-01-02 03:04:05`` (UTC)."""
    if not value:
        return DASH
    return value.replace("T", " ")[:19]


def execution_url(execution_id: str) -> str:
    return "/executions/" + quote(execution_id, safe="")


def datum_url(datum_id: str) -> str:
    return "/datums/" + quote(datum_id, safe="")


def history_url(project: str | None, url: str) -> str:
    return "/inputs?" + urlencode({"project": project or "", "url": url})


def datum_id_of(url: str) -> str | None:
    """The datum a ``datum://<id>`` input URL names (an alias too: the page says not found)."""
    return url[len("datum://") :] if url.startswith("datum://") else None


def register_filters(env: jinja2.Environment) -> None:
    env.filters.update(
        size=size,
        when=when,
        execution_url=execution_url,
        datum_url=datum_url,
        datum_id_of=datum_id_of,
    )
    env.globals.update(history_url=history_url)
