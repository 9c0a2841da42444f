"""store_outputs and purge end to end, against the embedded local store."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from tests.integration.conftest import Haul, new_id


def _outputs(haul: Haul, eid: str) -> Path:
    out = haul.exec_dir(eid) / "outputs"
    out.mkdir(parents=True, exist_ok=True)
    return out


def _store_root(haul: Haul) -> Path:
    return haul.data_dir / "store"


def test_outputs_become_content_addressed_datums(haul: Haul, tmp_path: Path) -> None:
    eid, project = new_id(), new_id("proj")
    out = _outputs(haul, eid)
    (out / "model.bin").write_bytes(b"weights" * 1000)
    (out / "model.bin.metadata.json").write_text(
        json.dumps({"valohai.tags": ["best", "v2"], "valohai.alias": "prod", "epoch": 7})
    )
    (out / "metrics").mkdir()
    (out / "metrics" / "loss.csv").write_text("step,loss\n1,0.5\n")
    secret = tmp_path / "secret.txt"
    secret.write_text("outside")
    (out / "link.txt").symlink_to(secret)
    (out / "linkdir").symlink_to(tmp_path)
    os.mkfifo(out / "pipe")

    state, summary = haul.run("haul.store_outputs", {"execution_id": eid, "project_id": project})
    assert state == "SUCCESS", summary
    assert summary["files"] == 2
    stored = {e["data"]["path"]: e["data"] for e in haul.events(eid, "haul.output.stored")}
    assert set(stored) == {"model.bin", "metrics/loss.csv"}
    model = stored["model.bin"]
    sha = hashlib.sha256(b"weights" * 1000).hexdigest()
    assert model["key"] == f"data/{project}/{sha[:2]}/{sha}/model.bin"
    assert model["sha256"] == sha and model["size"] == 7000 and model["deduplicated"] is False
    assert model["md5"] == hashlib.md5(b"weights" * 1000).hexdigest()
    assert (_store_root(haul) / model["key"]).read_bytes() == b"weights" * 1000

    refused = {
        e["data"]["path"]: e["data"]["reason"] for e in haul.events(eid, "haul.output.refused")
    }
    assert set(refused) == {"link.txt", "linkdir", "pipe"}
    assert "symlink" in refused["link.txt"]
    assert not any(
        "outside" in p.read_text(errors="ignore")
        for p in _store_root(haul).rglob("*")
        if p.is_file() and "data" in p.parts
    )

    datum = json.loads(haul.r.get(f"haul:datum:{model['datum_id']}"))
    assert datum["tags"] == ["best", "v2"] and datum["alias"] == "prod"
    assert datum["metadata"] == {"epoch": 7} and datum["purged"] is False
    assert datum["store"] == "default" and datum["execution_id"] == eid
    record = _store_root(haul) / "datums" / project / f"{model['datum_id']}.json"
    assert json.loads(record.read_text())["sha256"] == sha
    assert [e["data"]["files"] for e in haul.events(eid, "haul.outputs.stored")] == [2]

    # Redelivery: no second copy, same datums, same event ids, deduplicated.
    ids_before = {e["id"] for e in haul.events(eid)}
    state, again = haul.run("haul.store_outputs", {"execution_id": eid, "project_id": project})
    assert state == "SUCCESS"
    assert {d["datum_id"] for d in again["datums"]} == {d["datum_id"] for d in summary["datums"]}
    assert all(d["deduplicated"] for d in again["datums"])
    assert {e["id"] for e in haul.events(eid)} == ids_before
    assert json.loads(haul.r.get(f"haul:datum:{model['datum_id']}")) == datum
    copies = [p for p in (_store_root(haul) / "data" / project).rglob("*") if p.is_file()]
    assert len(copies) == 2


def test_purge_keeps_content_still_referenced(haul: Haul) -> None:
    project = new_id("proj")
    first, second = new_id(), new_id()
    for eid in (first, second):
        (_outputs(haul, eid) / "same.txt").write_text("identical content")
        assert (
            haul.run("haul.store_outputs", {"execution_id": eid, "project_id": project})[0]
            == "SUCCESS"
        )
    d1 = haul.events(first, "haul.output.stored")[0]["data"]
    d2 = haul.events(second, "haul.output.stored")[0]["data"]
    assert d1["key"] == d2["key"] and d1["datum_id"] != d2["datum_id"]
    assert d2["deduplicated"] is True
    content = _store_root(haul) / d1["key"]

    state, summary = haul.run("haul.purge", {"project_id": project, "datum_ids": [d1["datum_id"]]})
    assert state == "SUCCESS", summary
    assert summary["purged"][0]["content_removed"] is False
    assert content.exists()
    assert json.loads(haul.r.get(f"haul:datum:{d1['datum_id']}"))["purged"] is True
    rec = _store_root(haul) / "datums" / project / f"{d1['datum_id']}.json"
    assert json.loads(rec.read_text())["purged"] is True

    state, summary = haul.run("haul.purge", {"project_id": project, "datum_ids": [d2["datum_id"]]})
    assert summary["purged"][0]["content_removed"] is True
    assert not content.exists()
    purged = [
        e for e in haul.events(type_="haul.datum.purged") if e["data"]["project_id"] == project
    ]
    assert [e["data"]["content_removed"] for e in purged] == [False, True]

    # Purging again repeats the same fact with the same id; other projects cannot purge.
    haul.run("haul.purge", {"project_id": project, "datum_ids": [d2["datum_id"]]})
    again = [
        e for e in haul.events(type_="haul.datum.purged") if e["data"]["project_id"] == project
    ]
    assert again[-1]["id"] == purged[-1]["id"] and again[-1]["data"] == purged[-1]["data"]
    state, summary = haul.run("haul.purge", {"project_id": "other", "datum_ids": [d1["datum_id"]]})
    assert summary["unknown"] == [d1["datum_id"]]

    # Storing the purged execution's outputs again does not bring the content back.
    state, summary = haul.run("haul.store_outputs", {"execution_id": second, "project_id": project})
    assert state == "SUCCESS" and summary["files"] == 0
    assert not content.exists()
    refused = [e["data"]["reason"] for e in haul.events(second, "haul.output.refused")]
    assert any("purged" in reason for reason in refused)


def test_datum_inputs_read_stored_outputs(haul: Haul) -> None:
    project = new_id("proj")
    producer = new_id()
    (_outputs(haul, producer) / "nested").mkdir()
    (_outputs(haul, producer) / "nested" / "features.npy").write_bytes(b"\x93NUMPY" + b"0" * 100)
    _, summary = haul.run("haul.store_outputs", {"execution_id": producer, "project_id": project})
    datum = summary["datums"][0]["datum_id"]
    consumer = new_id()
    state, result = haul.run(
        "haul.prepare_inputs",
        {
            "execution_id": consumer,
            "project_id": project,
            "inputs": [{"name": "feat", "urls": [f"datum://{datum}"]}],
        },
    )
    assert state == "SUCCESS", result
    got = haul.exec_dir(consumer) / "inputs" / "feat" / "features.npy"
    assert got.read_bytes() == b"\x93NUMPY" + b"0" * 100
    assert (
        json.loads((haul.exec_dir(consumer) / "config" / "inputs.json").read_text())["feat"][
            "files"
        ][0]["uri"]
        == f"datum://{datum}"
    )
