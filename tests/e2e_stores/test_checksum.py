"""Bytes that differ from the checksum the server states: retried, then a failed input.

Two ways to get there against real servers:

* **on the wire**, every store: the worker reaches its server through a proxy
  (:mod:`tests.e2e_stores.proxy`) that flips a byte of one object's body. The server's stated
  md5 (S3 ETag, Azure Content-MD5, GCS md5Hash, Swift ETag) is the true one; the bytes are not.
* **on the server**, Azure only: Set Blob Properties stores any Content-MD5, as on the real
  service. None of the other emulators can be made to state a wrong checksum: moto derives the
  ETag from the bytes, fake-gcs-server recomputes md5Hash on every upload path (it ignores a
  claimed one, and ignores md5Hash in a metadata PATCH), and Swift rejects a wrong ETag (422).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator

import pytest

from tests.e2e_stores.conftest import (
    KINDS,
    PROJECT,
    AzureBucket,
    Lake,
    open_bucket,
    running_lake,
    sums,
    tag,
)
from tests.e2e_stores.proxy import corrupting_proxy
from tests.integration.conftest import new_id
from tests.support.servers import RedisServer

pytestmark = pytest.mark.integration

SHOWN = "/valohai/inputs/x/data.bin"


@pytest.fixture(scope="module", params=KINDS)
def lake(
    request: pytest.FixtureRequest,
    redis_srv: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Lake]:
    """A worker whose store ``lake`` is reached through a :class:`CorruptingProxy`."""
    bucket = open_bucket(request.param, request)
    try:
        with corrupting_proxy(bucket.base) as proxy:
            bucket.route_via(proxy.url)
            with running_lake(
                redis_srv, tmp_path_factory.mktemp(f"sum-{request.param}"), {"lake": bucket}
            ) as lk:
                lk.proxy = proxy
                yield lk
    finally:
        bucket.close()


def _prepare(lake: Lake, url: str) -> tuple[str, str]:
    """Run one execution with input ``x`` = ``url``; the worker log is marked where it starts."""
    lake.mark_log()
    eid = new_id()
    state, _ = lake.run(
        "haul.prepare_inputs",
        {"execution_id": eid, "project_id": PROJECT, "inputs": [{"name": "x", "urls": [url]}]},
    )
    return eid, state


def _assert_failed_after_three_attempts(lake: Lake, eid: str, url: str, message: str) -> None:
    [failed] = lake.events(eid, "haul.inputs.failed")
    error = failed["data"]["error"]
    assert error["code"] == "integrity_error", error
    assert message in error["message"], error
    assert failed["data"]["url"] == url
    # This execution's lines only: earlier tests used the same input path.
    worker_log = lake.log_since_mark()
    # Retried: the whole object from a fresh stat (md5), or the range alone (SDK's own check).
    for attempt in (2, 3):
        retried = (
            f"{SHOWN}: starting over (attempt {attempt})",
            rf"retrying {SHOWN} bytes \d+-\d+ \(attempt {attempt}\)",
        )
        assert any(re.search(p, worker_log) for p in (re.escape(retried[0]), retried[1])), (
            worker_log
        )
    assert f"{SHOWN}: failed: " in (lake.exec_dir(eid) / "haul.log").read_text()
    assert not [p for p in (lake.exec_dir(eid) / "inputs").rglob("*") if p.is_file()]
    assert not lake.events(eid, "haul.input.downloaded")


def _assert_downloads(lake: Lake, url: str, data: bytes) -> None:
    eid, state = _prepare(lake, url)
    assert state == "SUCCESS", lake.haul.log_tail()
    assert (lake.exec_dir(eid) / "inputs" / "x" / "data.bin").read_bytes() == data
    [ev] = lake.events(eid, "haul.input.downloaded")
    assert ev["data"]["source"]["checksum"].startswith("md5: ")


@pytest.mark.parametrize("form", ["key", "wildcard"])
def test_bytes_that_differ_from_the_stated_md5_are_retried_then_fail(lake: Lake, form: str) -> None:
    """Each of the 3 attempts gets a flipped byte; the input fails with ``integrity_error`` and
    leaves no file. Once the bytes arrive intact, the same input downloads."""
    proxy = lake.proxy
    assert proxy is not None
    folder = f"wire-{tag()}"
    key = f"{folder}/data.bin"
    data = os.urandom(5000)
    lake.bucket.put(key, data)
    proxy.corrupt(key)
    url = lake.bucket.url(key if form == "key" else f"{folder}/*.bin")

    eid, state = _prepare(lake, url)
    assert state == "FAILURE"
    flipped = bytes([data[0] ^ 0xFF]) + data[1:]
    # S3 ranges are read through presigned URLs (not botocore, which would check moto's stated
    # CRC32 first): haul's md5 check against the ETag catches it, as for every other store.
    message = f"md5 {sums(flipped)['md5']} differs from the server's checksum {sums(data)['md5']}"
    _assert_failed_after_three_attempts(lake, eid, lake.bucket.url(key), message)
    assert proxy.count(key) == 3

    proxy.keys.discard(key)
    _assert_downloads(lake, url, data)


@pytest.mark.parametrize("lake", ["azure"], indirect=True, scope="module")
def test_a_wrong_content_md5_on_the_server_is_retried_then_fails(lake: Lake) -> None:
    """Azure: a blob whose stated Content-MD5 is wrong fails the input after 3 attempts."""
    bucket = lake.bucket
    assert isinstance(bucket, AzureBucket)
    key = f"stated-{tag()}/data.bin"
    data = os.urandom(5000)
    wrong = hashlib.md5(b"something else").hexdigest()
    bucket.put(key, data)
    bucket.state_md5(key, wrong)

    eid, state = _prepare(lake, bucket.url(key))
    assert state == "FAILURE"
    _assert_failed_after_three_attempts(
        lake,
        eid,
        bucket.url(key),
        f"md5 {sums(data)['md5']} differs from the server's checksum {wrong}",
    )

    bucket.put(key, data)  # a fresh upload: Azure states the true Content-MD5 again
    _assert_downloads(lake, bucket.url(key), data)
