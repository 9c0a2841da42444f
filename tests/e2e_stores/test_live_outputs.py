"""Live outputs on a cloud store (S3 on moto): the deep cases run on the local store in
``tests/integration/test_watch.py``; this proves the same watch stores into a real bucket."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e_stores.conftest import PROJECT, Lake, open_bucket, running_lake
from tests.integration.conftest import new_id
from tests.support.servers import RedisServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def s3_lake(
    request: pytest.FixtureRequest,
    redis_srv: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Lake]:
    bucket = open_bucket("s3", request)
    project = {
        f"HAUL_PROJECTS__{PROJECT.upper()}__STORE": "lake",
        # The watch's last round may still run when the module ends; stopping the worker then
        # waited out the whole grace (25 s) for it.
        "HAUL_SHUTDOWN_GRACE_S": "1",
    }
    try:
        with running_lake(
            redis_srv, tmp_path_factory.mktemp("live-s3"), {"lake": bucket}, project
        ) as lk:
            yield lk
    finally:
        bucket.close()


def _stored(lake: Lake, eid: str) -> dict[str, dict[str, Any]]:
    return {e["data"]["path"]: e["data"] for e in lake.events(eid, "haul.output.stored")}


def test_live_outputs_on_a_cloud_store(s3_lake: Lake) -> None:
    """A read-only file is stored in the bucket while the watch runs; store_outputs then stores
    the rest, recognises the live one (deduplicated, same datum) and ends the watch."""
    lake = s3_lake
    eid = new_id()
    out = lake.outputs(eid)
    lake.haul.send("haul.watch_outputs", {"execution_id": eid, "project_id": PROJECT})
    (out / "ckpt.bin").write_bytes(b"checkpoint")
    (out / "ckpt.bin").chmod(0o444)
    deadline = time.monotonic() + 30
    while not _stored(lake, eid) and time.monotonic() < deadline:
        time.sleep(0.05)
    live = _stored(lake, eid)["ckpt.bin"]
    assert lake.bucket.get(live["key"]) == b"checkpoint"
    (out / "final.txt").write_bytes(b"final")
    state, summary = lake.run("haul.store_outputs", {"execution_id": eid, "project_id": PROJECT})
    assert state == "SUCCESS", summary
    by_path = {d["path"]: d for d in summary["datums"]}
    assert by_path["ckpt.bin"]["datum_id"] == live["datum_id"]
    assert by_path["ckpt.bin"]["deduplicated"] is True and summary["files"] == 2
