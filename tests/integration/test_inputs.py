"""prepare_inputs end to end: a real worker downloads from a real HTTP server."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from tests.integration.conftest import Haul, new_id
from tests.support.httpserver import TestHTTPServer

LINE = re.compile(
    r"^\d\d:\d\d:\d\d (?P<path>/\S+): (?P<fact>downloaded, \d+(\.\d)? (B|kB|MB|GB)|"
    r"md5 sum: [0-9a-f]{32}|sha1 sum: [0-9a-f]{40}|sha256 sum: [0-9a-f]{64})$"
)


def _publish(www: TestHTTPServer, rel: str, data: bytes) -> str:
    path = Path(www.root) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return www.url("/" + rel)


def _sums(data: bytes) -> dict[str, str]:
    return {
        "md5": hashlib.md5(data).hexdigest(),
        "sha1": hashlib.sha1(data).hexdigest(),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def _no_parts(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if ".haul-part" in p.name]


def test_http_inputs_land_complete_with_records(haul: Haul, www: TestHTTPServer) -> None:
    """Files, inputs.json, haul.log lines and events all agree with the bytes served."""
    labels = os.urandom(28_900)
    images = os.urandom(3 * 1024 * 1024 + 5)
    u1 = _publish(www, "mnist/train-labels.gz", labels)
    u2 = _publish(www, "mnist/deep/train-images.gz", images)
    eid = new_id()
    msg = {
        "execution_id": eid,
        "project_id": "proj-42",
        "inputs": [
            {"name": "dataset", "urls": [u1, u2]},
            {"name": "renamed", "urls": [u1], "filename": "labels.bin"},
            {"name": "full", "urls": [u2], "keep_directories": "full"},
        ],
    }
    state, summary = haul.run("haul.prepare_inputs", msg)
    assert state == "SUCCESS", summary
    assert summary["status"] == "ready" and summary["files"] == 4

    inputs = haul.exec_dir(eid) / "inputs"
    assert (inputs / "dataset" / "train-labels.gz").read_bytes() == labels
    assert (inputs / "dataset" / "train-images.gz").read_bytes() == images
    assert (inputs / "renamed" / "labels.bin").read_bytes() == labels
    assert (inputs / "full" / "mnist" / "deep" / "train-images.gz").read_bytes() == images
    assert (haul.exec_dir(eid) / "outputs").is_dir()
    assert _no_parts(inputs)

    doc = json.loads((haul.exec_dir(eid) / "config" / "inputs.json").read_text())
    files = {f["path"]: f for f in doc["dataset"]["files"]}
    f1 = files["/valohai/inputs/dataset/train-labels.gz"]
    assert f1 == {
        "name": "train-labels.gz",
        "path": "/valohai/inputs/dataset/train-labels.gz",
        "size": 28_900,
        "uri": u1,
        "checksums": _sums(labels),
    }
    assert doc["full"]["files"][0]["path"] == "/valohai/inputs/full/mnist/deep/train-images.gz"

    lines = (haul.exec_dir(eid) / "haul.log").read_text().splitlines()
    assert all(LINE.match(line) for line in lines), lines
    facts = [LINE.match(line)["fact"] for line in lines if LINE.match(line)["path"] == f1["path"]]
    assert facts == [
        "downloaded, 28.9 kB",
        f"md5 sum: {_sums(labels)['md5']}",
        f"sha1 sum: {_sums(labels)['sha1']}",
        f"sha256 sum: {_sums(labels)['sha256']}",
    ]

    downloaded = haul.events(eid, "haul.input.downloaded")
    assert len(downloaded) == 4
    ev = next(e for e in downloaded if e["data"]["path"] == f1["path"])
    assert ev["specversion"] == "1.0" and ev["subject"] == eid
    assert ev["source"] and ev["time"] and ev["datacontenttype"] == "application/json"
    data = ev["data"]
    assert (data["md5"], data["sha1"], data["sha256"]) == tuple(_sums(labels).values())
    assert data["size"] == 28_900 and data["project_id"] == "proj-42" and data["input"] == "dataset"
    assert data["source"]["etag"]
    ready = haul.events(eid, "haul.inputs.ready")
    assert [e["data"]["files"] for e in ready] == [4]
    assert ready[0]["data"]["bytes"] == 2 * 28_900 + 2 * len(images)


def test_changed_input_warns_and_redelivery_repeats_the_same_ids(
    haul: Haul, www: TestHTTPServer
) -> None:
    """Different content for the same URL: a warning, never a failure; retries are idempotent."""
    url = _publish(www, "drift/data.csv", b"a,b\n1,2\n")
    project = new_id("proj")
    first, second = new_id(), new_id()

    def message(eid: str) -> dict[str, object]:
        return {
            "execution_id": eid,
            "project_id": project,
            "inputs": [{"name": "table", "urls": [url]}],
        }

    assert haul.run("haul.prepare_inputs", message(first))[0] == "SUCCESS"
    assert not haul.events(first, "haul.input.changed")
    _publish(www, "drift/data.csv", b"a,b\n1,2\n3,4\n")
    state, summary = haul.run("haul.prepare_inputs", message(second))
    assert state == "SUCCESS" and summary["status"] == "ready"

    changed = haul.events(second, "haul.input.changed")
    assert len(changed) == 1
    data = changed[0]["data"]
    assert data["previous"]["execution_id"] == first
    assert data["previous"]["sha256"] == hashlib.sha256(b"a,b\n1,2\n").hexdigest()
    assert data["current"]["sha256"] == hashlib.sha256(b"a,b\n1,2\n3,4\n").hexdigest()
    assert (data["previous"]["size"], data["current"]["size"]) == (8, 12)
    assert first in data["message"] and data["url"] == url
    warning = [
        ln
        for ln in (haul.exec_dir(second) / "haul.log").read_text().splitlines()
        if "warning:" in ln
    ]
    assert len(warning) == 1
    assert first in warning[0] and data["current"]["sha256"] in warning[0]

    # The orchestrator re-sends the same message: same facts, same event ids, no new warning.
    before = {e["id"] for e in haul.events(second)}
    assert haul.run("haul.prepare_inputs", message(second))[0] == "SUCCESS"
    again = haul.events(second)
    assert {e["id"] for e in again} == before
    repeated = [e for e in again if e["type"] == "haul.input.changed"]
    assert {e["data"]["previous"]["execution_id"] for e in repeated} == {first}
    assert all(
        e["data"]["current"]
        == repeated[0]["data"]["current"] | {"seen_at": e["data"]["current"]["seen_at"]}
        for e in repeated
    )
    cached = [e["data"]["cached"] for e in again if e["type"] == "haul.input.downloaded"]
    assert cached == [False, True]
    # haul.log keeps one line per fact: the redelivery added none.
    log_lines = (haul.exec_dir(second) / "haul.log").read_text().splitlines()
    assert sum(": downloaded, " in ln for ln in log_lines) == 1
    assert sum("warning:" in ln for ln in log_lines) == 1


def test_optional_missing_is_skipped_required_missing_fails(
    haul: Haul, www: TestHTTPServer
) -> None:
    present = _publish(www, "opt/present.txt", b"here")
    missing = www.url("/opt/missing.txt")
    eid = new_id()
    state, summary = haul.run(
        "haul.prepare_inputs",
        {
            "execution_id": eid,
            "project_id": "p",
            "inputs": [
                {"name": "maybe", "urls": [missing], "optional": True},
                {"name": "sure", "urls": [present]},
            ],
        },
    )
    assert state == "SUCCESS", summary
    skipped = haul.events(eid, "haul.input.skipped")
    assert [e["data"]["input"] for e in skipped] == ["maybe"]
    assert skipped[0]["data"]["url"] == missing

    eid = new_id()
    state, _ = haul.run(
        "haul.prepare_inputs",
        {
            "execution_id": eid,
            "project_id": "p",
            "inputs": [{"name": "sure", "urls": [present]}, {"name": "gone", "urls": [missing]}],
        },
    )
    assert state == "FAILURE"
    failed = haul.events(eid, "haul.inputs.failed")
    assert len(failed) == 1
    assert failed[0]["data"]["input"] == "gone"
    assert failed[0]["data"]["error"]["code"] == "not_found"
    assert "404" in failed[0]["data"]["error"]["message"]
    assert not haul.events(eid, "haul.inputs.ready")
    assert _no_parts(haul.exec_dir(eid) / "inputs")


def test_truncated_and_replaced_objects_never_leave_partial_files(
    haul: Haul, www: TestHTTPServer
) -> None:
    """A body cut short is retried; a server that keeps cutting fails the input cleanly."""
    data = os.urandom(2 * 1024 * 1024)
    url = _publish(www, "cut/once.bin", data)
    www.faults.truncate("/cut/once.bin", after_bytes=1000, times=1)
    eid = new_id()
    assert (
        haul.run(
            "haul.prepare_inputs",
            {"execution_id": eid, "project_id": "p", "inputs": [{"name": "x", "urls": [url]}]},
        )[0]
        == "SUCCESS"
    )
    assert (haul.exec_dir(eid) / "inputs" / "x" / "once.bin").read_bytes() == data

    url = _publish(www, "cut/always.bin", data)
    www.faults.truncate("/cut/always.bin", after_bytes=1000, times=None)
    eid = new_id()
    try:
        state, _ = haul.run(
            "haul.prepare_inputs",
            {"execution_id": eid, "project_id": "p", "inputs": [{"name": "x", "urls": [url]}]},
        )
    finally:
        www.faults.clear()
    assert state == "FAILURE"
    failed = haul.events(eid, "haul.inputs.failed")[0]["data"]
    assert failed["error"]["code"] == "integrity_error"
    folder = haul.exec_dir(eid) / "inputs" / "x"
    assert not (folder / "always.bin").exists()
    assert _no_parts(haul.exec_dir(eid) / "inputs")


def test_credentials_never_reach_logs_records_or_events(haul: Haul, www: TestHTTPServer) -> None:
    _publish(www, "private/secret.bin", b"classified")
    port = www.url("/").split(":")[2].split("/")[0]
    url = (
        f"http://u:p@127.0.0.1:{port}/private/secret.bin"
        "?X-Amz-Signature=SIGSECRET&X-Amz-Credential=CREDSECRET&part=1"
    )
    eid = new_id()
    state, summary = haul.run(
        "haul.prepare_inputs",
        {"execution_id": eid, "project_id": "p", "inputs": [{"name": "s", "urls": [url]}]},
    )
    assert state == "SUCCESS", summary
    assert (haul.exec_dir(eid) / "inputs" / "s" / "secret.bin").read_bytes() == b"classified"
    shown = f"http://127.0.0.1:{port}/private/secret.bin?part=1"
    texts = {
        "haul.log": (haul.exec_dir(eid) / "haul.log").read_text(),
        "inputs.json": (haul.exec_dir(eid) / "config" / "inputs.json").read_text(),
        "events": json.dumps(haul.events(eid)),
        "summary": json.dumps(summary),
        "worker log": haul.log_tail(),
    }
    for where, text in texts.items():
        for secret in ("SIGSECRET", "CREDSECRET", "u:p@"):
            assert secret not in text, f"{secret} leaked into {where}"
    assert shown in texts["inputs.json"] and shown in texts["events"]


def test_redirects_are_followed(haul: Haul, www: TestHTTPServer) -> None:
    data = b"after three hops"
    _publish(www, "hops/target.txt", data)
    eid = new_id()
    state, summary = haul.run(
        "haul.prepare_inputs",
        {
            "execution_id": eid,
            "project_id": "p",
            "inputs": [
                {"name": "r", "urls": [www.url("/redirect/3/hops/target.txt")], "filename": "t.txt"}
            ],
        },
    )
    assert state == "SUCCESS", summary
    assert (haul.exec_dir(eid) / "inputs" / "r" / "t.txt").read_bytes() == data


def test_invalid_messages_are_rejected_and_the_worker_carries_on(haul: Haul) -> None:
    eid = new_id()
    bad = {
        "execution_id": "../../etc",
        "project_id": "p",
        "inputs": [{"name": "x", "urls": ["ftp://nowhere/x"]}],
    }
    state, summary = haul.run("haul.prepare_inputs", bad)
    assert state == "SUCCESS" and summary["status"] == "rejected"
    rejected = [
        e
        for e in haul.events(type_="haul.message.rejected")
        if e["data"]["task"] == "haul.prepare_inputs"
        and any(x["field"] == "execution_id" for x in e["data"]["errors"])
    ]
    assert rejected
    fields = {x["field"] for x in rejected[-1]["data"]["errors"]}
    assert {"execution_id", "inputs.0.urls"} <= fields
    assert not (haul.data_dir / "etc").exists()
    state, summary = haul.run("haul.store_outputs", "not an object")
    assert summary["status"] == "rejected"
    # Still alive: the next good message is handled.
    state, summary = haul.run("haul.prepare_inputs", {"execution_id": eid, "project_id": "p"})
    assert state == "SUCCESS" and summary["status"] == "ready"


def test_share_inputs_with_wildcards_and_keep_directories(haul: Haul) -> None:
    """A declared local store (a mounted share) read through file:// URLs with wildcards."""
    share: Path = haul.share  # type: ignore[attr-defined]
    for rel in ("mnist/train/a.gz", "mnist/train/b.gz", "mnist/test/c.gz", "mnist/README"):
        (share / rel).parent.mkdir(parents=True, exist_ok=True)
        (share / rel).write_bytes(rel.encode())
    eid = new_id()
    msg = {
        "execution_id": eid,
        "project_id": "p",
        "inputs": [
            {"name": "none", "urls": [f"file://{share}/mnist/train/*.gz"]},
            {
                "name": "suffix",
                "urls": [f"file://{share}/mnist/**.gz"],
                "keep_directories": "suffix",
            },
            {"name": "full", "urls": [f"file://{share}/mnist/t*/c.gz"], "keep_directories": "full"},
        ],
    }
    state, summary = haul.run("haul.prepare_inputs", msg)
    assert state == "SUCCESS" and summary["status"] == "ready", summary
    inputs = haul.exec_dir(eid) / "inputs"
    assert sorted(p.name for p in (inputs / "none").iterdir()) == ["a.gz", "b.gz"]
    assert (inputs / "suffix" / "train" / "a.gz").read_bytes() == b"mnist/train/a.gz"
    assert (inputs / "suffix" / "test" / "c.gz").exists()
    assert (inputs / "full" / "mnist" / "test" / "c.gz").exists()

    eid = new_id()
    state, _ = haul.run(
        "haul.prepare_inputs",
        {
            "execution_id": eid,
            "project_id": "p",
            "inputs": [{"name": "none", "urls": [f"file://{share}/mnist/*.parquet"]}],
        },
    )
    assert state == "FAILURE"
    assert haul.events(eid, "haul.inputs.failed")[0]["data"]["error"]["code"] == "no_match"


def test_failures_outside_the_download_still_publish_inputs_failed(
    haul: Haul, www: TestHTTPServer, tmp_path: Path
) -> None:
    """Through a real worker: a pre-made symlink at the execution folder, and a folder where
    ``config/inputs.json`` goes, each end the task as a failure with ``haul.inputs.failed``
    (an orchestrator waiting for the outcome gets one), and the worker serves the next one."""
    (Path(www.root) / "one.bin").write_bytes(b"one")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    linked = new_id()
    haul.exec_dir(linked).parent.mkdir(parents=True, exist_ok=True)
    haul.exec_dir(linked).symlink_to(elsewhere)
    blocked = new_id()
    (haul.exec_dir(blocked) / "config" / "inputs.json").mkdir(parents=True)
    for eid, code in ((linked, "unsafe_path"), (blocked, "destination_error")):
        state, _ = haul.run(
            "haul.prepare_inputs",
            {
                "execution_id": eid,
                "project_id": "p",
                "inputs": [{"name": "x", "urls": [www.url("/one.bin")]}],
            },
        )
        assert state == "FAILURE"
        [failed] = haul.events(eid, "haul.inputs.failed")
        assert failed["data"]["error"]["code"] == code
    assert list(elsewhere.iterdir()) == []
    assert sorted(p.name for p in (haul.exec_dir(blocked) / "config").iterdir()) == ["inputs.json"]
    assert haul.worker.proc.poll() is None
