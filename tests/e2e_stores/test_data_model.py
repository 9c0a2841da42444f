"""Aliases and dataset versions end to end, once per store (local, S3, Azure, GCS, Swift).

One compact scenario per store, driven as an orchestrator would: a real worker stores outputs
whose sidecars name an alias and dataset versions, later executions read ``datum://<alias>``
and ``dataset://<dataset>/<version>``, a purge makes the alias resolve to nothing, a redelivered
message publishes the same facts with the same ids, and ``haul reindex`` rebuilds aliases and
versions from the store alone after Redis lost them. The deeper cases (concurrent moves,
refusals, big versions) run on the local store and S3 in ``tests/integration/test_data_model.py``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e_stores.conftest import (
    HAUL_LOG_LINE,
    KINDS,
    PROJECT,
    Bucket,
    Lake,
    open_bucket,
    running_lake,
    sums,
    tag,
)
from tests.integration.conftest import new_id
from tests.support.servers import RedisServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", params=("local", *KINDS))
def data_lake(
    request: pytest.FixtureRequest,
    redis_srv: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Lake]:
    """A worker whose store ``lake`` (the project's) is a local folder or a fresh bucket."""
    project = {f"HAUL_PROJECTS__{PROJECT.upper()}__STORE": "lake"}
    data_dir = tmp_path_factory.mktemp(f"data-{request.param}")
    if request.param == "local":
        folder = tmp_path_factory.mktemp("local-lake")
        env = {"HAUL_STORES__LAKE__TYPE": "local", "HAUL_STORES__LAKE__PATH": str(folder)}
        with running_lake(redis_srv, data_dir, {}, project | env) as lk:
            yield lk
        return
    bucket: Bucket = open_bucket(request.param, request)
    try:
        with running_lake(redis_srv, data_dir, {"lake": bucket}, project) as lk:
            yield lk
    finally:
        bucket.close()


def _store(lake: Lake, eid: str) -> dict[str, Any]:
    state, summary = lake.run("haul.store_outputs", {"execution_id": eid, "project_id": PROJECT})
    assert state == "SUCCESS", summary
    return dict(summary)


def _prepare(lake: Lake, eid: str, inputs: list[dict[str, Any]]) -> tuple[str, Any]:
    return lake.run(
        "haul.prepare_inputs", {"execution_id": eid, "project_id": PROJECT, "inputs": inputs}
    )


def _write(out: Path, rel: str, data: bytes, sidecar: dict[str, Any] | None = None) -> None:
    path = out / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if sidecar is not None:
        (out / f"{rel}.metadata.json").write_text(json.dumps(sidecar))


def _stored(lake: Lake, eid: str) -> dict[str, dict[str, Any]]:
    return {e["data"]["path"]: e["data"] for e in lake.events(eid, "haul.output.stored")}


def test_alias_and_dataset_versions_on_every_store(data_lake: Lake) -> None:
    """The whole data model on one store: alias moves and resolves, versions are built (one
    from the other), sealed, read as inputs, survive a redelivery and a reindex."""
    lake = data_lake
    alias, ds = f"best-{tag()}", f"ds-{tag()}"
    v1, v2 = f"dataset://{ds}/v1", f"dataset://{ds}/v2"

    # Execution A: model (alias) and two data files, all in v1.
    a = new_id()
    out = lake.outputs(a)
    files_a = {"model.bin": b"model A", "data/a.txt": b"a" * 100, "data/b.txt": b"b1" * 50}
    for rel, data in files_a.items():
        meta: dict[str, Any] = {"valohai.dataset-versions": [v1]}
        if rel == "model.bin":
            meta["valohai.alias"] = alias
        _write(out, rel, data, meta)
    _store(lake, a)
    stored_a = _stored(lake, a)
    assert {p: d["dataset_versions"] for p, d in stored_a.items()} == {p: [v1] for p in files_a}
    assert stored_a["model.bin"]["alias"] == alias
    moved = [e["data"] for e in lake.events(a, "haul.alias.moved")]
    assert moved == [
        {
            "project_id": PROJECT,
            "alias": alias,
            "datum_id": stored_a["model.bin"]["datum_id"],
            "previous_datum_id": None,
            "execution_id": a,
        }
    ]
    created = [e["data"] for e in lake.events(a, "haul.dataset.version.created")]
    assert len(created) == 1 and created[0]["version"] == "v1" and created[0]["files"] == 3
    assert created[0]["bytes"] == sum(len(d) for d in files_a.values())
    assert set(created[0]["datum_ids"]) == {d["datum_id"] for d in stored_a.values()}

    # Execution B: a new model moves the alias; v2 from v1 replaces data/b.txt; v1 is sealed.
    b = new_id()
    out = lake.outputs(b)
    _write(out, "model.bin", b"model B", {"valohai.alias": alias})
    _write(out, "data/b.txt", b"b2" * 70, {"valohai.dataset-versions": [{"uri": v2, "from": v1}]})
    _write(out, "late.txt", b"late", {"valohai.dataset-versions": [v1]})
    summary_b = _store(lake, b)
    stored_b = _stored(lake, b)
    assert summary_b["files"] == 3 and stored_b["late.txt"]["dataset_versions"] == []
    refused = [e["data"] for e in lake.events(b, "haul.output.refused")]
    assert [r["path"] for r in refused] == ["late.txt"] and v1 in refused[0]["reason"]
    assert "sealed" in refused[0]["reason"]
    moved_b = [e["data"] for e in lake.events(b, "haul.alias.moved")]
    assert moved_b[0]["previous_datum_id"] == stored_a["model.bin"]["datum_id"]
    created_b = lake.events(b, "haul.dataset.version.created")
    members_v2 = {
        stored_a["model.bin"]["datum_id"],
        stored_a["data/a.txt"]["datum_id"],
        stored_b["data/b.txt"]["datum_id"],
    }
    assert set(created_b[0]["data"]["datum_ids"]) == members_v2

    # A redelivered store message: the same facts with the same ids.
    ids_b = sorted(e["id"] for e in lake.events(b))
    _store(lake, b)
    assert sorted({e["id"] for e in lake.events(b)}) == sorted(set(ids_b))

    # Execution C reads the alias and v2.
    c = new_id()
    state, ready = _prepare(
        lake, c, [{"name": "model", "urls": [f"datum://{alias}"]}, {"name": "d", "urls": [v2]}]
    )
    assert state == "SUCCESS", ready
    inputs = lake.exec_dir(c) / "inputs"
    assert (inputs / "model" / "model.bin").read_bytes() == b"model B"
    laid_out = {p.relative_to(inputs / "d").as_posix() for p in (inputs / "d").rglob("*.*")}
    assert laid_out == {"model.bin", "data/a.txt", "data/b.txt"}
    assert (inputs / "d" / "data" / "b.txt").read_bytes() == b"b2" * 70
    doc = json.loads((lake.exec_dir(c) / "config" / "inputs.json").read_text())
    by_name = {f["name"]: f for f in doc["d"]["files"]}
    assert by_name["data/a.txt"]["uri"] == f"datum://{stored_a['data/a.txt']['datum_id']}"
    assert by_name["data/a.txt"]["checksums"] == sums(b"a" * 100)
    lines = (lake.exec_dir(c) / "haul.log").read_text().splitlines()
    assert all(HAUL_LOG_LINE.match(line) for line in lines)
    assert sum("/d/data/b.txt: sha256 sum:" in line for line in lines) == 1
    assert not lake.events(c, "haul.input.changed")

    # Purging B's model: the alias resolves to nothing (no fall back to A's model).
    purge = {"project_id": PROJECT, "datum_ids": [stored_b["model.bin"]["datum_id"]]}
    assert lake.run("haul.purge", purge)[0] == "SUCCESS"
    d = new_id()
    state, result = _prepare(
        lake, d, [{"name": "m", "urls": [f"datum://{alias}"], "optional": True}]
    )
    assert state == "SUCCESS" and result["files"] == 0
    assert [e["data"]["input"] for e in lake.events(d, "haul.input.skipped")] == ["m"]
    state, _ = _prepare(lake, new_id(), [{"name": "m", "urls": [f"datum://{alias}"]}])
    assert state == "FAILURE"

    # Redis loses everything; the store alone rebuilds datums, alias history and versions.
    r = lake.haul.r
    history = r.zrange(f"haul:alias:{PROJECT}:{alias}", 0, -1)
    for pattern in ("haul:datum*", "haul:alias*", "haul:dataset*"):
        for key in r.scan_iter(pattern):
            r.delete(key)
    done = lake.cli("reindex", "lake")
    assert done.returncode == 0, done.stderr
    assert r.zrange(f"haul:alias:{PROJECT}:{alias}", 0, -1) == history and len(history) == 2
    e = new_id()
    state, ready = _prepare(lake, e, [{"name": "d", "urls": [v1]}])
    assert state == "SUCCESS", ready
    assert ready["files"] == 3
    assert (lake.exec_dir(e) / "inputs" / "d" / "data" / "b.txt").read_bytes() == b"b1" * 50
