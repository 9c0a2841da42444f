"""Every store makes exactly one attempt per call: the SDKs' own retries are off too.

Each backend's real SDK client is pointed at the test HTTP server, which answers every request
503 with ``Retry-After`` and counts them. One call must cost one request and raise a
TransientError that carries the server's wish, whatever the SDK would have done by default
(botocore, azure-core, google-cloud-storage and swiftclient all retry on their own unless told
not to). The engine's retry policy is the only one left.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.httpserver import TestHTTPServer, serve
from worker.errors import TransientError
from worker.stores.base import Store


def _s3(base: str) -> Store:
    from worker.stores.s3 import S3Store

    return S3Store("s3", "bkt", endpoint_url=base, region="us-east-1")


def _azure(base: str) -> Store:
    from worker.stores.azure import AzureStore

    key = base64.b64encode(b"haul-test-key").decode()
    conn = (
        f"DefaultEndpointsProtocol=http;AccountName=acct;AccountKey={key};BlobEndpoint={base}/acct;"
    )
    return AzureStore("azure", "box", connection_string=conn)


def _gcs(base: str) -> Store:
    from worker.stores.gcs import GCSStore

    return GCSStore("gcs", "bkt", endpoint_url=base, project="p", anonymous=True)


def _swift(base: str) -> Store:
    from worker.stores.swift import SwiftAuth, SwiftStore

    auth = SwiftAuth(auth_url=f"{base}/auth/v1.0", auth_version="1", user="u", key="k")
    return SwiftStore("swift", "box", auth, project="p")


MAKERS: dict[str, Callable[[str], Store]] = {
    "s3": _s3,
    "azure": _azure,
    "gcs": _gcs,
    "swift": _swift,
}


@pytest.fixture
def busy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestHTTPServer]:
    for var, value in {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}.items():
        monkeypatch.setenv(var, value)
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    with serve(tmp_path) as srv:
        srv.faults.fail_next("*", n=10_000, status=503, headers={"Retry-After": "2"})
        yield srv


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_one_call_is_one_request(kind: str, busy: TestHTTPServer) -> None:
    """A stat and a read each cost one request against a server that is always busy, and each
    says how long the server asked to wait. (Creates are not covered here: the test server
    answers no PUT or POST; the engine test of a busy S3 output counts those.)"""
    store = MAKERS[kind](busy.base_url)
    calls: list[Callable[[], object]] = [
        lambda: store.stat("k.txt"),
        lambda: store.get_record("k.json"),
    ]
    try:
        for n, call in enumerate(calls, start=1):
            with pytest.raises(TransientError) as caught:
                call()
            assert caught.value.retry_after_s == 2.0, kind
            assert len(busy.requests) == n, (kind, [r.path for r in busy.requests])
    finally:
        store.close()
