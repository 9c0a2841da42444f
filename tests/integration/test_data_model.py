"""The deeper alias and dataset-version cases, on a real worker with the embedded local store.

The worker runs two prefork processes, so two store_outputs messages sent together really run
at the same time; what they race on (one alias) is checked only through what the contract
shows: the events and what ``datum://<alias>`` resolves to.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Haul, new_id

pytestmark = pytest.mark.integration


def _write(haul: Haul, eid: str, rel: str, data: bytes, sidecar: Any = None) -> None:
    out = haul.exec_dir(eid) / "outputs"
    path = out / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if sidecar is not None:
        (out / f"{rel}.metadata.json").write_text(json.dumps(sidecar))


def _store(haul: Haul, eid: str, project: str) -> dict[str, Any]:
    state, summary = haul.run("haul.store_outputs", {"execution_id": eid, "project_id": project})
    assert state == "SUCCESS", summary
    return dict(summary)


def _prepare(haul: Haul, eid: str, project: str, inputs: list[Any]) -> tuple[str, Any]:
    return haul.run(
        "haul.prepare_inputs", {"execution_id": eid, "project_id": project, "inputs": inputs}
    )


def test_two_executions_moving_one_alias_at_once(haul: Haul) -> None:
    """Both moves are published and kept; the alias ends on the later created_at's datum."""
    project, alias = new_id("proj"), "shared"
    eids = [new_id(), new_id()]
    for n, eid in enumerate(eids):
        # Many files before the aliased one, so the two tasks overlap while storing.
        for i in range(20):
            _write(haul, eid, f"a/{i:02d}.txt", f"{eid} {i}".encode())
        _write(haul, eid, "z-model.bin", f"model {n}".encode(), {"valohai.alias": alias})
    results = [
        haul.send("haul.store_outputs", {"execution_id": e, "project_id": project}) for e in eids
    ]
    for r in results:
        assert r.get(timeout=60)["files"] == 21
    stored = [
        next(e["data"] for e in haul.events(eid, "haul.output.stored") if e["data"]["alias"])
        for eid in eids
    ]
    moves = [e["data"] for eid in eids for e in haul.events(eid, "haul.alias.moved")]
    assert {m["datum_id"] for m in moves} == {s["datum_id"] for s in stored}
    records = {s["datum_id"]: json.loads(haul.r.get(f"haul:datum:{s['datum_id']}")) for s in stored}
    later = max(records.values(), key=lambda d: (d["created_at"], d["datum_id"]))
    history = haul.r.zrange(f"haul:alias:{project}:{alias}", 0, -1)
    assert [json.loads(h)["datum_id"] for h in history][-1] == later["datum_id"]
    assert len(history) == 2
    files = haul.data_dir / "store" / "aliases" / project / alias
    assert len(list(files.iterdir())) == 2
    eid = new_id()
    state, _ = _prepare(haul, eid, project, [{"name": "m", "urls": [f"datum://{alias}"]}])
    assert state == "SUCCESS"
    shown = (haul.exec_dir(eid) / "inputs" / "m" / "z-model.bin").read_bytes()
    assert shown == (haul.exec_dir(later["execution_id"]) / "outputs" / "z-model.bin").read_bytes()


def test_invalid_alias_and_unusable_versions_are_refused(haul: Haul) -> None:
    """An invalid alias is not set (the sidecar is refused, the file stored with its tags); an
    unknown ``from`` and a conflicting ``from`` are refused against the file's path."""
    project, eid = new_id("proj"), new_id()
    hexish = "0123456789abcdef0123456789abcdef"
    _write(haul, eid, "m.bin", b"m", {"valohai.alias": hexish, "valohai.tags": ["t"]})
    _write(haul, eid, "n.bin", b"n", {"valohai.alias": "9lives"})
    _write(
        haul,
        eid,
        "o.bin",
        b"o",
        {"valohai.dataset-versions": [{"uri": "dataset://d/v2", "from": "dataset://d/nope"}]},
    )
    _write(haul, eid, "p.bin", b"p", {"valohai.dataset-versions": ["dataset://e/v1"]})
    _write(
        haul,
        eid,
        "q.bin",
        b"q",
        {"valohai.dataset-versions": [{"uri": "dataset://e/v1", "from": "dataset://d/v1"}]},
    )
    summary = _store(haul, eid, project)
    assert summary["files"] == 5
    stored = {e["data"]["path"]: e["data"] for e in haul.events(eid, "haul.output.stored")}
    assert stored["m.bin"]["alias"] is None and stored["m.bin"]["tags"] == ["t"]
    assert stored["p.bin"]["dataset_versions"] == ["dataset://e/v1"]
    assert stored["o.bin"]["dataset_versions"] == stored["q.bin"]["dataset_versions"] == []
    refused = {
        e["data"]["path"]: e["data"]["reason"] for e in haul.events(eid, "haul.output.refused")
    }
    assert set(refused) == {"m.bin.metadata.json", "n.bin.metadata.json", "o.bin", "q.bin"}
    assert "datum id" in refused["m.bin.metadata.json"]
    assert "dataset://d/nope" in refused["o.bin"] and "from" in refused["q.bin"]
    assert not haul.events(eid, "haul.alias.moved")
    created = [e["data"] for e in haul.events(eid, "haul.dataset.version.created")]
    assert [(c["dataset"], c["version"], c["files"]) for c in created] == [("e", "v1", 1)]


def test_from_names_an_older_version_of_the_same_dataset(haul: Haul) -> None:
    """``from`` another dataset's (sealed, existing) version is refused against the file's path,
    like an unknown ``from``: the file is a datum, no version is made; the same dataset's works."""
    project, first, later = new_id("proj"), new_id(), new_id()
    _write(haul, first, "a.txt", b"a", {"valohai.dataset-versions": ["dataset://d/v1"]})
    _store(haul, first, project)
    cross = {"uri": "dataset://e/v1", "from": "dataset://d/v1"}
    same = {"uri": "dataset://d/v2", "from": "dataset://d/v1"}
    _write(haul, later, "b.txt", b"b", {"valohai.dataset-versions": [cross]})
    _write(haul, later, "c.txt", b"c", {"valohai.dataset-versions": [same]})
    assert _store(haul, later, project)["files"] == 2
    stored = {e["data"]["path"]: e["data"] for e in haul.events(later, "haul.output.stored")}
    assert stored["b.txt"]["dataset_versions"] == []
    assert stored["c.txt"]["dataset_versions"] == ["dataset://d/v2"]
    refused = [e["data"] for e in haul.events(later, "haul.output.refused")]
    assert [r["path"] for r in refused] == ["b.txt"]
    assert "dataset://e/v1" in refused[0]["reason"] and "dataset://d/v1" in refused[0]["reason"]
    created = [e["data"] for e in haul.events(later, "haul.dataset.version.created")]
    assert [(c["dataset"], c["version"], c["files"]) for c in created] == [("d", "v2", 2)]


def test_dataset_input_layout_and_purged_members(haul: Haul) -> None:
    """``keep_directories: none`` flattens a version; a purged member fails the input, and an
    optional input skips just that member."""
    project, eid = new_id("proj"), new_id()
    uri = "dataset://imgs/v1"
    for rel in ("train/a.png", "train/b.png", "test/c.png"):
        _write(haul, eid, rel, rel.encode(), {"valohai.dataset-versions": [uri]})
    _store(haul, eid, project)
    stored = {e["data"]["path"]: e["data"] for e in haul.events(eid, "haul.output.stored")}

    flat = new_id()
    spec = {"name": "i", "urls": [uri], "keep_directories": "none"}
    assert _prepare(haul, flat, project, [spec])[0] == "SUCCESS"
    assert sorted(p.name for p in (haul.exec_dir(flat) / "inputs" / "i").iterdir()) == [
        "a.png",
        "b.png",
        "c.png",
    ]

    gone = stored["train/b.png"]["datum_id"]
    purge = {"project_id": project, "datum_ids": [gone]}
    assert haul.run("haul.purge", purge)[0] == "SUCCESS"
    failed = new_id()
    state, _ = _prepare(haul, failed, project, [{"name": "i", "urls": [uri]}])
    assert state == "FAILURE"
    error = haul.events(failed, "haul.inputs.failed")[0]["data"]["error"]
    assert error["code"] == "not_found" and gone in error["message"]

    optional = new_id()
    state, ready = _prepare(
        haul, optional, project, [{"name": "i", "urls": [uri], "optional": True}]
    )
    assert state == "SUCCESS" and ready["files"] == 2
    skipped = haul.events(optional, "haul.input.skipped")
    assert [s["data"]["url"] for s in skipped] == [f"datum://{gone}"]
    inputs = haul.exec_dir(optional) / "inputs" / "i"
    assert {p.relative_to(inputs).as_posix() for p in inputs.rglob("*.png")} == {
        "train/a.png",
        "test/c.png",
    }
    # An unknown version is a missing input: skipped when optional, else a failure.
    state, ready = _prepare(
        haul, new_id(), project, [{"name": "x", "urls": ["dataset://imgs/v9"], "optional": True}]
    )
    assert state == "SUCCESS" and ready["files"] == 0


def test_the_store_keeps_version_pages_and_header(haul: Haul) -> None:
    """The sealed version is in the store as pages of members plus a header record."""
    project, eid = new_id("proj"), new_id()
    _write(haul, eid, "x.txt", b"x", {"valohai.dataset-versions": ["dataset://k/1"]})
    _store(haul, eid, project)
    folder: Path = haul.data_dir / "store" / "datasets" / project / "k" / "1"
    header = json.loads((folder / "version.json").read_text())
    assert header["files"] == 1 and header["execution_id"] == eid and header["pages"] == 1
    page = json.loads((folder / "pages" / "000000.json").read_text())
    assert page[0][0] == "x.txt"
