"""``<file>.metadata.json`` sidecars: tags, alias, dataset versions and other metadata.

A sidecar that is not a JSON object is ignored whole (and reported). Within a usable sidecar,
one bad field does not spoil the others: an invalid ``valohai.alias`` or dataset-version entry
is dropped with a problem to report, and the file keeps its tags and metadata.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker.records.aliases import alias_problem
from worker.records.datasets import VersionEntry, parse_entries

TAGS = "valohai.tags"
ALIAS = "valohai.alias"
DATASET_VERSIONS = "valohai.dataset-versions"
#: a sidecar larger than this is not read (it is metadata, not data)
MAX_SIDECAR_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Metadata:
    tags: list[str] = field(default_factory=list)
    alias: str | None = None
    dataset_versions: list[VersionEntry] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    #: why parts of the sidecar were not used (each one a ``haul.output.refused``)
    problems: list[str] = field(default_factory=list)


def _no_constant(name: str) -> Any:
    raise ValueError(f"not valid JSON: {name} is not a JSON number")


def read_sidecar(path: Path) -> Metadata:
    """Parse a sidecar; raise ValueError when none of it can be used."""
    try:
        if path.stat().st_size > MAX_SIDECAR_BYTES:
            raise ValueError(f"larger than {MAX_SIDECAR_BYTES} bytes")
        doc = json.loads(path.read_text(encoding="utf-8"), parse_constant=_no_constant)
    except OSError as exc:
        raise ValueError(f"cannot be read: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not valid JSON: {exc}") from None
    except RecursionError:
        # a 1 MiB "[[[[..." used to fail the whole task with internal_error
        raise ValueError("not valid JSON: nested too deeply") from None
    if not isinstance(doc, dict):
        raise ValueError("must be a JSON object")  # noqa: TRY004 (reported as a problem, not a bug)
    tags = doc.pop(TAGS, [])
    alias = doc.pop(ALIAS, None)
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise ValueError(f"{TAGS} must be a list of strings")
    problems: list[str] = []
    if alias is not None:
        problem = alias_problem(alias) if isinstance(alias, str) else f"{ALIAS} must be a string"
        if problem is not None:
            problems.append(f"alias not set: {problem}")
            alias = None
    entries: list[VersionEntry] = []
    if DATASET_VERSIONS in doc:
        entries, bad = parse_entries(doc.pop(DATASET_VERSIONS))
        problems += bad
    return Metadata(tags, alias, entries, doc, problems)
