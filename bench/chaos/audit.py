"""The figures a chaos run ends with, read from what haul left: disk, store, Redis, events.

* **lost executions**: no outcome event (``haul.outputs.stored`` / a ``*.failed``) by the end.
* **failed executions**: an outcome, but a failure (with its code); not lost, still counted.
* **partial files seen**: from the :class:`~bench.chaos.watch.Watcher`, plus a final full check
  of every input file (sha256) and every stored object (sha256 = the one in its key).
* **duplicate datums**: one (execution, output path) with more than one datum id, in the
  store's datum records or in the Redis index.
* **conflicting records**: a datum record (store or Redis) whose key, size or sha256 is not the
  object's; Redis and store records of one datum that disagree; ``inputs.json`` checksums that
  are not the file's; a fact written twice in ``haul.log``.
* **events whose id repeats with other data**: two entries with one CloudEvents id whose data
  differ beyond what the contract lets differ (``seconds``, ``time``, ``cached``,
  ``deduplicated``).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from bench.chaos.load import PROJECT, Corpus, Execution
from worker.constants import KEY_DATUM, KEY_PROJECT_DATUMS

#: what may differ between two publications of one fact (contract section 2)
_MAY_DIFFER = {"seconds", "cached", "deduplicated"}


@dataclass
class Figures:
    executions: int = 0
    done: int = 0
    lost: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    partial_seen: list[str] = field(default_factory=list)
    duplicate_datums: list[str] = field(default_factory=list)
    conflicting_records: list[str] = field(default_factory=list)
    conflicting_events: list[str] = field(default_factory=list)
    events: int = 0
    events_repeated: int = 0
    #: where each lost execution's messages went (bench.chaos.trace), printed after the figures
    trace: list[str] = field(default_factory=list)

    def zero(self) -> bool:
        return not (
            self.lost
            or self.partial_seen
            or self.duplicate_datums
            or self.conflicting_records
            or self.conflicting_events
        )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _strip(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _strip(v) for k, v in data.items() if k not in _MAY_DIFFER}
    if isinstance(data, list):
        return [_strip(v) for v in data]
    return data


def audit_events(r: redis.Redis[str], fig: Figures) -> None:
    seen: dict[str, Any] = {}
    counts: Counter[str] = Counter()
    for _id, fields in r.xrange("haul:events"):
        ev = json.loads(fields["event"])
        fig.events += 1
        counts[ev["id"]] += 1
        body = {k: v for k, v in ev.items() if k != "time"}
        body["data"] = _strip(body.get("data"))
        if ev["id"] in seen and seen[ev["id"]] != body:
            fig.conflicting_events.append(f"{ev['id']} ({ev['type']})")
        seen.setdefault(ev["id"], body)
    fig.events_repeated = sum(1 for c in counts.values() if c > 1)


def audit_inputs(data_dir: Path, corpus: Corpus, ex: Execution, fig: Figures) -> None:
    folder = data_dir / "executions" / ex.execution_id
    truth = {name: hashlib.sha256(data).hexdigest() for name, data in corpus.inputs.items()}
    for path in (folder / "inputs").rglob("*"):
        if path.is_file() and truth.get(path.name) != _sha256(path):
            fig.partial_seen.append(f"{path}: not the input's bytes (final check)")
    doc_path = folder / "config" / "inputs.json"
    if ex.phase in ("storing", "done", "outputs_failed"):
        doc = json.loads(doc_path.read_text())
        for entry in doc.values():
            for f in entry["files"]:
                if f["checksums"]["sha256"] != truth.get(Path(f["name"]).name):
                    fig.conflicting_records.append(f"{doc_path}: {f['name']} checksum")
    log = folder / "haul.log"
    if log.exists():
        facts = Counter(line[9:] for line in log.read_text().splitlines() if line)
        for fact, n in facts.items():
            if n > 1:
                fig.conflicting_records.append(f"{log}: {fact!r} written {n} times")


def audit_store(store_root: Path, r: redis.Redis[str], fig: Figures) -> None:
    """Datum records in the store and in Redis, against the objects they name."""
    by_path: dict[tuple[str, str], set[str]] = defaultdict(set)
    records: dict[str, dict[str, Any]] = {}
    for path in (store_root / "datums" / PROJECT).glob("*.json"):
        rec = json.loads(path.read_bytes())
        records[rec["datum_id"]] = rec
        by_path[(rec["execution_id"], rec["path"])].add(rec["datum_id"])
        obj = store_root / rec["key"]
        if not obj.is_file():
            fig.conflicting_records.append(f"store record {rec['datum_id']}: no object")
        elif obj.stat().st_size != rec["size"] or _sha256(obj) != rec["sha256"]:
            fig.conflicting_records.append(f"store record {rec['datum_id']}: other bytes")
    for obj in (store_root / "data").rglob("*"):
        if obj.is_file() and _sha256(obj) != obj.parent.name:
            fig.partial_seen.append(f"{obj}: bytes do not match its key (final check)")
    indexed = r.smembers(f"{KEY_PROJECT_DATUMS}:{PROJECT}")
    for datum in indexed:
        raw = r.get(f"{KEY_DATUM}:{datum}")
        if raw is None:
            fig.conflicting_records.append(f"redis index names {datum} without a record")
            continue
        rec = json.loads(raw)
        by_path[(rec["execution_id"], rec["path"])].add(rec["datum_id"])
        store_rec = records.get(datum)
        fields = ("key", "size", "sha256", "md5", "execution_id", "path")
        if store_rec is None:
            fig.conflicting_records.append(f"redis record {datum}: none in the store")
        elif any(store_rec[f] != rec[f] for f in fields):
            fig.conflicting_records.append(f"redis record {datum}: differs from the store's")
    for (eid, out_path), ids in sorted(by_path.items()):
        if len(ids) > 1:
            fig.duplicate_datums.append(f"{eid}/{out_path}: {len(ids)} datums")


def audit(
    redis_url: str,
    data_dir: Path,
    store_root: Path,
    corpus: Corpus,
    executions: dict[str, Execution],
    partial_seen: list[str],
) -> Figures:
    fig = Figures(executions=len(executions), partial_seen=list(partial_seen))
    for ex in executions.values():
        if ex.phase == "done":
            fig.done += 1
        elif ex.phase in ("inputs_failed", "outputs_failed"):
            fig.failed[ex.execution_id] = str((ex.error or {}).get("code"))
        else:
            fig.lost.append(f"{ex.execution_id} ({ex.phase})")
        if ex.phase != "new":
            audit_inputs(data_dir, corpus, ex, fig)
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        audit_events(r, fig)
        audit_store(store_root, r, fig)
    finally:
        r.close()
    return fig
