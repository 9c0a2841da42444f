"""The foundation's end-to-end cases, once per cloud store (``lake`` is S3, Azure, GCS, Swift).

A real worker subprocess reads inputs from the store and writes outputs to it; every check goes
through what an orchestrator sees (task results, the event stream, files on disk) and what the
bucket holds (read back with the store's own SDK).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import pytest
from redis import Redis

from tests.e2e_stores.conftest import (
    HAUL_LOG_LINE,
    PREFIX,
    PROJECT,
    AzureBucket,
    Lake,
    S3Bucket,
    SwiftBucket,
    sums,
    tag,
)
from tests.integration.conftest import new_id

pytestmark = pytest.mark.integration

#: what the ``source.checksum`` of a single-part object says, per store
PLAIN_NOTE = {
    "s3": "md5: single-part ETag",
    "azure": "md5: Content-MD5",
    "gcs": "md5: md5Hash",
    "swift": "md5: ETag of a plain object",
}


def _prepare(lake: Lake, eid: str, inputs: list[dict[str, Any]]) -> tuple[str, Any]:
    return lake.run(
        "haul.prepare_inputs", {"execution_id": eid, "project_id": PROJECT, "inputs": inputs}
    )


def _log_facts(lake: Lake, eid: str) -> dict[str, list[str]]:
    lines = (lake.exec_dir(eid) / "haul.log").read_text().splitlines()
    bad = [line for line in lines if not HAUL_LOG_LINE.match(line)]
    assert not bad, bad
    facts: dict[str, list[str]] = {}
    for line in lines:
        m = HAUL_LOG_LINE.match(line)
        assert m is not None
        facts.setdefault(m["path"], []).append(m["fact"])
    return facts


def test_inputs_single_key_and_wildcards(lake: Lake) -> None:
    """A key and ``*`` / ``**`` patterns land as files with the right layout, records and sums."""
    bucket = lake.bucket
    base = f"in-{tag()}/ds"
    objects = {
        f"{base}/readme.txt": b"read me\n",
        f"{base}/train/a.csv": os.urandom(1500),
        f"{base}/train/b.csv": os.urandom(2100),
        f"{base}/train/notes.md": b"# not a csv\n",
        f"{base}/train/sub/c.csv": os.urandom(700),
        f"{base}/test/x.csv": os.urandom(64),
    }
    for key, data in objects.items():
        bucket.put(key, data)
    eid = new_id()
    inputs = [
        {"name": "single", "urls": [bucket.url(f"{base}/readme.txt")]},
        {"name": "star", "urls": [bucket.url(f"{base}/train/*.csv")]},
        {
            "name": "starfull",
            "urls": [bucket.url(f"{base}/train/*.csv")],
            "keep_directories": "full",
        },
        {"name": "deep", "urls": [bucket.url(f"{base}/**.csv")], "keep_directories": "suffix"},
        {"name": "flat", "urls": [bucket.url(f"{base}/train/**/*.csv")]},
    ]
    state, summary = _prepare(lake, eid, inputs)
    assert state == "SUCCESS", (summary, lake.haul.log_tail())

    expected = {
        "single": {"readme.txt": f"{base}/readme.txt"},
        "star": {"a.csv": f"{base}/train/a.csv", "b.csv": f"{base}/train/b.csv"},
        "starfull": {
            f"{base}/train/a.csv": f"{base}/train/a.csv",
            f"{base}/train/b.csv": f"{base}/train/b.csv",
        },
        "deep": {
            "train/a.csv": f"{base}/train/a.csv",
            "train/b.csv": f"{base}/train/b.csv",
            "train/sub/c.csv": f"{base}/train/sub/c.csv",
            "test/x.csv": f"{base}/test/x.csv",
        },
        "flat": {
            "a.csv": f"{base}/train/a.csv",
            "b.csv": f"{base}/train/b.csv",
            "c.csv": f"{base}/train/sub/c.csv",
        },
    }
    inputs_dir = lake.exec_dir(eid) / "inputs"
    on_disk = {p.relative_to(inputs_dir).as_posix() for p in inputs_dir.rglob("*") if p.is_file()}
    assert on_disk == {f"{name}/{rel}" for name, files in expected.items() for rel in files}
    doc = json.loads((lake.exec_dir(eid) / "config" / "inputs.json").read_text())
    facts = _log_facts(lake, eid)
    downloaded = {e["data"]["path"]: e["data"] for e in lake.events(eid, "haul.input.downloaded")}
    assert len(downloaded) == len(on_disk)
    for name, files in expected.items():
        listed = {f["path"]: f for f in doc[name]["files"]}
        assert len(listed) == len(files)
        for rel, key in files.items():
            data = objects[key]
            path = f"/valohai/inputs/{name}/{rel}"
            assert (inputs_dir / name / rel).read_bytes() == data
            # A pattern's files are recorded with the URL of each object they came from.
            assert listed[path] == {
                "name": rel,
                "path": path,
                "size": len(data),
                "uri": bucket.url(key),
                "checksums": sums(data),
            }
            assert facts[path][1:] == [
                f"md5 sum: {sums(data)['md5']}",
                f"sha1 sum: {sums(data)['sha1']}",
                f"sha256 sum: {sums(data)['sha256']}",
            ]
            assert facts[path][0].startswith("downloaded, ")
            ev = downloaded[path]
            assert ev["url"] == bucket.url(key) and ev["size"] == len(data)
            assert (ev["md5"], ev["sha1"], ev["sha256"]) == tuple(sums(data).values())
            source = ev["source"]
            assert source["etag"] and source["version"] and source["last_modified"]
            # no ETag quotes (Azure pins with the quoted form; events name it bare)
            assert '"' not in source["etag"] + source["version"], source
            # Every one of these objects states a usable md5, and haul checked it.
            assert source["checksum"] == PLAIN_NOTE[bucket.kind], (path, source)
    assert facts["/valohai/inputs/single/readme.txt"][0] == "downloaded, 8 B"
    ready = lake.events(eid, "haul.inputs.ready")
    assert [e["data"]["files"] for e in ready] == [len(on_disk)]
    assert not [p for p in inputs_dir.rglob("*") if ".haul-part" in p.name]


def test_a_pattern_that_matches_nothing_fails_clearly(lake: Lake) -> None:
    """A non-optional wildcard input with no match fails the task with ``no_match``."""
    bucket = lake.bucket
    base = f"none-{tag()}"
    bucket.put(f"{base}/present.txt", b"here")
    pattern = bucket.url(f"{base}/**/*.parquet")
    eid = new_id()
    state, _ = _prepare(lake, eid, [{"name": "tables", "urls": [pattern]}])
    assert state == "FAILURE"
    [failed] = lake.events(eid, "haul.inputs.failed")
    assert failed["data"]["input"] == "tables"
    assert failed["data"]["error"]["code"] == "no_match"
    assert failed["data"]["error"]["message"] == f"{pattern} matched no object"
    log = (lake.exec_dir(eid) / "haul.log").read_text()
    assert f"/valohai/inputs/tables: failed: {pattern} matched no object" in log
    assert not lake.events(eid, "haul.inputs.ready")

    # The same pattern on an optional input is skipped with an event, and the task succeeds.
    eid = new_id()
    state, summary = _prepare(lake, eid, [{"name": "tables", "urls": [pattern], "optional": True}])
    assert state == "SUCCESS", summary
    [skipped] = lake.events(eid, "haul.input.skipped")
    assert skipped["data"]["url"] == pattern and "matched no object" in skipped["data"]["reason"]


def test_replaced_object_warns_on_the_next_execution(lake: Lake) -> None:
    """The same URL with new content: a warning line and event, never a failure."""
    bucket = lake.bucket
    key = f"drift-{tag()}/table.csv"
    v1, v2 = b"a,b\n1,2\n", b"a,b\n1,2\n3,4\n"
    bucket.put(key, v1)
    first, second = new_id(), new_id()
    message = [{"name": "table", "urls": [bucket.url(key)]}]
    assert _prepare(lake, first, message)[0] == "SUCCESS"
    assert not lake.events(first, "haul.input.changed")
    before = bucket.version(key)
    bucket.put(key, v2)
    assert bucket.version(key) != before

    state, summary = _prepare(lake, second, message)
    assert state == "SUCCESS", summary
    assert (lake.exec_dir(second) / "inputs" / "table" / "table.csv").read_bytes() == v2
    assert summary["changed"] == [
        {"input": "table", "url": bucket.url(key), "path": "/valohai/inputs/table/table.csv"}
    ]
    [changed] = lake.events(second, "haul.input.changed")
    data = changed["data"]
    assert data["url"] == bucket.url(key)
    assert data["previous"]["sha256"] == sums(v1)["sha256"] and data["previous"]["size"] == 8
    assert data["previous"]["execution_id"] == first
    assert data["current"]["sha256"] == sums(v2)["sha256"] and data["current"]["size"] == 12
    warnings = _log_facts(lake, second)["/valohai/inputs/table/table.csv"]
    assert [w for w in warnings if w.startswith("warning: ")] == [f"warning: {data['message']}"]
    assert first in data["message"]


def _store(lake: Lake, eid: str, **extra: Any) -> tuple[str, Any]:
    return lake.run(
        "haul.store_outputs", {"execution_id": eid, "project_id": PROJECT, **extra}, timeout=120
    )


def _purge(lake: Lake, *datum_ids: str) -> tuple[str, Any]:
    return lake.run("haul.purge", {"project_id": PROJECT, "datum_ids": list(datum_ids)})


def _content_key(sha: str, name: str) -> str:
    return f"{PREFIX}/data/{PROJECT}/{sha[:2]}/{sha}/{name}"


def _record_key(datum_id: str) -> str:
    return f"{PREFIX}/datums/{PROJECT}/{datum_id}.json"


def test_outputs_are_content_addressed_recorded_and_deduplicated(lake: Lake) -> None:
    """Outputs go to the project's store under content keys, with a datum record beside them;
    storing them again sends nothing and overwrites nothing."""
    bucket = lake.bucket
    eid = new_id()
    out = lake.outputs(eid)
    model = f"weights {tag()}".encode() * 5000
    loss = f"step,loss\n1,0.5\n# {tag()}\n".encode()
    (out / "model.bin").write_bytes(model)
    (out / "model.bin.metadata.json").write_text(json.dumps({"valohai.tags": ["best"], "k": 1}))
    (out / "metrics").mkdir()
    (out / "metrics" / "loss.csv").write_bytes(loss)

    state, summary = _store(lake, eid)
    assert state == "SUCCESS", (summary, lake.haul.log_tail())
    assert summary["store"] == "lake" and summary["files"] == 2
    stored = {e["data"]["path"]: e["data"] for e in lake.events(eid, "haul.output.stored")}
    assert set(stored) == {"model.bin", "metrics/loss.csv"}
    for path, data in (("model.bin", model), ("metrics/loss.csv", loss)):
        ev = stored[path]
        sha = hashlib.sha256(data).hexdigest()
        key = _content_key(sha, path.rsplit("/", 1)[-1])
        assert ev["key"] == key and ev["uri"] == bucket.url(key)
        assert (ev["md5"], ev["sha1"], ev["sha256"]) == tuple(sums(data).values())
        assert ev["size"] == len(data) and ev["deduplicated"] is False
        assert bucket.get(key) == data
        record = json.loads(bucket.get(_record_key(ev["datum_id"])))
        assert record["datum_id"] == ev["datum_id"] and record["key"] == key
        assert record["store"] == "lake" and record["uri"] == bucket.url(key)
        assert record["sha256"] == sha and record["size"] == len(data)
        assert record["purged"] is False and record["execution_id"] == eid
        indexed = json.loads(lake.haul.r.get(f"haul:datum:{ev['datum_id']}") or "null")
        assert indexed == record
    assert json.loads(bucket.get(_record_key(stored["model.bin"]["datum_id"])))["tags"] == ["best"]

    data_keys = sorted(bucket.keys(f"{PREFIX}/data/{PROJECT}/"))
    versions = {k: bucket.version(k) for k in (stored[p]["key"] for p in stored)}
    ids = {e["id"] for e in lake.events(eid)}

    state, again = _store(lake, eid)
    assert state == "SUCCESS", again
    assert all(d["deduplicated"] for d in again["datums"])
    assert {d["datum_id"] for d in again["datums"]} == {s["datum_id"] for s in stored.values()}
    assert {e["id"] for e in lake.events(eid)} == ids
    assert sorted(bucket.keys(f"{PREFIX}/data/{PROJECT}/")) == data_keys
    assert {k: bucket.version(k) for k in versions} == versions
    if isinstance(bucket, S3Bucket):  # versioned: an overwrite would have left a second version
        assert all(len(bucket.versions(k)) == 1 for k in versions)


def test_large_output_goes_up_in_parts_and_reads_back(lake: Lake) -> None:
    """Above the multipart threshold an output is sent in parts and comes back byte-exact."""
    bucket = lake.bucket
    producer = new_id()
    data = os.urandom(11 * 1024 * 1024 + 123)
    (lake.outputs(producer) / "big.bin").write_bytes(data)
    state, summary = _store(lake, producer)
    assert state == "SUCCESS", (summary, lake.haul.log_tail())
    [datum] = summary["datums"]
    key = _content_key(hashlib.sha256(data).hexdigest(), "big.bin")
    assert datum["key"] == key and datum["size"] == len(data)
    assert hashlib.sha256(bucket.get(key)).digest() == hashlib.sha256(data).digest()
    parts = bucket.parts(key)
    assert parts in (3, None), parts  # 5 + 5 + 1 MiB; None: the server does not show parts

    # Read back through haul itself: a datum:// input, fetched in pinned ranges.
    consumer = new_id()
    state, result = _prepare(
        lake, consumer, [{"name": "m", "urls": [f"datum://{datum['datum_id']}"]}]
    )
    assert state == "SUCCESS", (result, lake.haul.log_tail())
    got = lake.exec_dir(consumer) / "inputs" / "m" / "big.bin"
    assert hashlib.sha256(got.read_bytes()).digest() == hashlib.sha256(data).digest()
    [ev] = lake.events(consumer, "haul.input.downloaded")
    note = ev["data"]["source"]["checksum"]
    if bucket.kind == "s3":
        assert note == "none: multipart ETag is not a content hash"
    elif bucket.kind == "swift":
        assert note.startswith("none: an SLO manifest")
    else:  # Azure: haul sets Content-MD5 on the commit; GCS computes md5Hash itself
        assert note == PLAIN_NOTE[bucket.kind]

    # Again: deduplicated without sending a byte.
    state, again = _store(lake, producer)
    assert state == "SUCCESS" and again["datums"][0]["deduplicated"] is True

    # Purging the only datum removes every part (Swift: the SLO segments too).
    state, purged = _purge(lake, datum["datum_id"])
    assert state == "SUCCESS" and purged["purged"][0]["content_removed"] is True
    assert not bucket.exists(key)
    if isinstance(bucket, SwiftBucket):
        assert bucket.segment_keys(key) == []
    if isinstance(bucket, AzureBucket):
        assert bucket.keys(key) == []


def test_purge_keeps_content_until_the_last_reference_goes(lake: Lake) -> None:
    """Two datums share one object; it stays while either is live and goes with the last."""
    bucket = lake.bucket
    content = f"identical content {tag()}".encode()
    first, second = new_id(), new_id()
    for eid in (first, second):
        (lake.outputs(eid) / "same.txt").write_bytes(content)
        assert _store(lake, eid)[0] == "SUCCESS"
    d1 = lake.events(first, "haul.output.stored")[0]["data"]
    d2 = lake.events(second, "haul.output.stored")[0]["data"]
    assert d1["key"] == d2["key"] and d1["datum_id"] != d2["datum_id"]
    assert d2["deduplicated"] is True
    key = d1["key"]

    state, summary = _purge(lake, d1["datum_id"])
    assert state == "SUCCESS", summary
    assert summary["purged"][0]["content_removed"] is False
    assert bucket.get(key) == content
    assert json.loads(bucket.get(_record_key(d1["datum_id"])))["purged"] is True
    assert json.loads(bucket.get(_record_key(d2["datum_id"])))["purged"] is False

    state, summary = _purge(lake, d2["datum_id"])
    assert state == "SUCCESS", summary
    assert summary["purged"][0]["content_removed"] is True
    assert not bucket.exists(key)
    assert key not in bucket.keys(key)
    if isinstance(bucket, S3Bucket):  # versioned bucket: no version and no delete marker left
        assert bucket.versions(key) == []
    assert json.loads(bucket.get(_record_key(d2["datum_id"])))["purged"] is True
    events = [
        e["data"]
        for e in lake.events(type_="haul.datum.purged")
        if e["data"]["datum_id"] in (d1["datum_id"], d2["datum_id"])
    ]
    assert [e["content_removed"] for e in events] == [False, True]

    # A purged datum is no longer an input.
    eid = new_id()
    state, _ = _prepare(lake, eid, [{"name": "x", "urls": [f"datum://{d2['datum_id']}"]}])
    assert state == "FAILURE"
    assert "was purged" in lake.events(eid, "haul.inputs.failed")[0]["data"]["error"]["message"]


def _index(r: Redis[str]) -> dict[str, Any]:
    """Every datum index key of the worker's Redis database, decoded."""
    out: dict[str, Any] = {}
    for pattern in ("haul:datum:*", "haul:datums:*", "haul:refs:*"):
        for key in r.scan_iter(pattern):
            if key.endswith(":lock"):
                continue
            if key.startswith("haul:datum:"):
                out[key] = json.loads(r.get(key) or "null")
            else:
                out[key] = sorted(r.smembers(key))
    return out


def test_reindex_rebuilds_the_datum_index_from_the_store(lake: Lake) -> None:
    """``haul reindex lake`` restores records, project sets and content references from the
    store's datum records alone."""
    bucket = lake.bucket
    keep, drop = new_id(), new_id()
    kept = f"kept {tag()}".encode()
    (lake.outputs(keep) / "kept.txt").write_bytes(kept)
    (lake.outputs(drop) / "dropped.txt").write_bytes(f"dropped {tag()}".encode())
    for eid in (keep, drop):
        assert _store(lake, eid)[0] == "SUCCESS"
    d_keep = lake.events(keep, "haul.output.stored")[0]["data"]
    d_drop = lake.events(drop, "haul.output.stored")[0]["data"]
    assert _purge(lake, d_drop["datum_id"])[0] == "SUCCESS"

    r = lake.haul.r
    before = _index(r)
    assert f"haul:datum:{d_keep['datum_id']}" in before
    for key in before:
        r.delete(key)
    assert _index(r) == {}

    done = lake.cli("reindex", "lake")
    assert done.returncode == 0, done.stderr
    records = [k for k in bucket.keys(f"{PREFIX}/datums/") if k.endswith(".json")]
    assert f"reindexed {len(records)} datum record(s) from store 'lake'" in done.stdout
    after = _index(r)
    # Content references of purged datums are empty sets, which Redis does not keep.
    assert after == {k: v for k, v in before.items() if v != []}

    # The rebuilt index works: the kept datum is an input, and purging it removes its content.
    eid = new_id()
    state, _ = _prepare(lake, eid, [{"name": "k", "urls": [f"datum://{d_keep['datum_id']}"]}])
    assert state == "SUCCESS"
    assert (lake.exec_dir(eid) / "inputs" / "k" / "kept.txt").read_bytes() == kept
    state, summary = _purge(lake, d_keep["datum_id"])
    assert state == "SUCCESS" and summary["purged"][0]["content_removed"] is True
    assert not bucket.exists(d_keep["key"])
