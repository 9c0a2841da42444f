"""One worker that knows all four cloud stores: one message takes inputs from all of them and
from HTTP, and outputs go to whichever store the project (or the message) names."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e_stores.conftest import KINDS, PREFIX, Lake, open_bucket, running_lake, sums, tag
from tests.integration.conftest import new_id
from tests.support.httpserver import TestHTTPServer, serve
from tests.support.servers import RedisServer

pytestmark = pytest.mark.integration

#: the project whose outputs go to the GCS store unless a message names another
MIXED = "mixedproj"


@pytest.fixture(scope="module")
def www(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestHTTPServer]:
    with serve(tmp_path_factory.mktemp("www")) as srv:
        yield srv


@pytest.fixture(scope="module")
def mixed(
    request: pytest.FixtureRequest,
    redis_srv: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
    www: TestHTTPServer,
) -> Iterator[Lake]:
    """Stores ``s3``, ``azure``, ``gcs`` and ``swift`` on fresh buckets, one worker."""
    buckets = {kind: open_bucket(kind, request) for kind in KINDS}
    try:
        with running_lake(
            redis_srv,
            tmp_path_factory.mktemp("mixed"),
            buckets,
            {
                f"HAUL_PROJECTS__{MIXED.upper()}__STORE": "gcs",
                "HAUL_ALLOW_PRIVATE_ADDRESSES": "true",
            },
        ) as lk:
            yield lk
    finally:
        for bucket in buckets.values():
            bucket.close()


def test_one_message_reads_all_four_stores_and_http(mixed: Lake, www: TestHTTPServer) -> None:
    """Each URL is read with the endpoint and credentials of the store that owns its bucket."""
    base = f"mix-{tag()}"
    sources: dict[str, tuple[str, bytes]] = {}
    for kind, bucket in mixed.buckets.items():
        data = os.urandom(3000) + kind.encode()
        bucket.put(f"{base}/{kind}.bin", data)
        bucket.put(f"{base}/more/{kind}-1.csv", b"1," + kind.encode())
        bucket.put(f"{base}/more/{kind}-2.csv", b"2," + kind.encode())
        sources[kind] = (bucket.url(f"{base}/{kind}.bin"), data)
    page = os.urandom(4000)
    (Path(www.root) / f"{base}.bin").write_bytes(page)
    sources["http"] = (www.url(f"/{base}.bin"), page)

    eid = new_id()
    inputs = [{"name": name, "urls": [url]} for name, (url, _) in sources.items()]
    inputs.append(
        {
            "name": "tables",
            "urls": [b.url(f"{base}/more/*.csv") for b in mixed.buckets.values()],
        }
    )
    state, summary = mixed.run(
        "haul.prepare_inputs", {"execution_id": eid, "project_id": MIXED, "inputs": inputs}
    )
    assert state == "SUCCESS", (summary, mixed.haul.log_tail())
    assert summary["files"] == 5 + 8

    inputs_dir = mixed.exec_dir(eid) / "inputs"
    doc = json.loads((mixed.exec_dir(eid) / "config" / "inputs.json").read_text())
    for name, (url, data) in sources.items():
        file_name = url.rsplit("/", 1)[-1]
        assert (inputs_dir / name / file_name).read_bytes() == data
        [entry] = doc[name]["files"]
        assert entry["uri"] == url and entry["checksums"] == sums(data)
    tables = {p.name: p.read_bytes() for p in (inputs_dir / "tables").iterdir()}
    assert tables == {f"{kind}-{n}.csv": f"{n},{kind}".encode() for kind in KINDS for n in (1, 2)}
    downloaded = {e["data"]["url"]: e["data"] for e in mixed.events(eid, "haul.input.downloaded")}
    for kind in KINDS:
        url, _ = sources[kind]
        assert downloaded[url]["source"]["checksum"].startswith("md5: "), downloaded[url]
    assert mixed.events(eid, "haul.inputs.ready")[0]["data"]["files"] == 13


def test_outputs_go_to_the_project_store_or_the_one_the_message_names(mixed: Lake) -> None:
    """Without ``store`` the project's store (gcs) takes the outputs; with it, that store."""
    for target in (None, *KINDS):
        eid = new_id()
        data = f"result for {target} {tag()}".encode()
        (mixed.outputs(eid) / "result.txt").write_bytes(data)
        message = {"execution_id": eid, "project_id": MIXED}
        if target is not None:
            message["store"] = target
        state, summary = mixed.run("haul.store_outputs", message)
        assert state == "SUCCESS", (summary, mixed.haul.log_tail())
        store = target or "gcs"
        assert summary["store"] == store
        [datum] = summary["datums"]
        sha = hashlib.sha256(data).hexdigest()
        key = f"{PREFIX}/data/{MIXED}/{sha[:2]}/{sha}/result.txt"
        bucket = mixed.buckets[store]
        assert datum["key"] == key and datum["uri"] == bucket.url(key)
        assert bucket.get(key) == data
        record = json.loads(bucket.get(f"{PREFIX}/datums/{MIXED}/{datum['datum_id']}.json"))
        assert record["store"] == store and record["sha256"] == sha
        for other, other_bucket in mixed.buckets.items():
            if other != store:
                assert not other_bucket.exists(key)
