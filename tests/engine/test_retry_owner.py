"""One owner of retries: a store or HTTP server answering 503 forever costs exactly
``max_attempts`` requests per call, within the budget, with ``Retry-After`` honoured.

Real servers count the requests: the test HTTP server for HTTP(S), and the same server posing
as an S3 endpoint (boto3 signs and sends; it answers 503 to everything) for a cloud store.
Before the single policy, a store retried each call inside while the engine retried it again:
up to 25 requests per file. The sleep is injected, so nothing here waits for real.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.engine.conftest import SMALL_CFG, digests_of, leftovers
from tests.support.httpserver import TestHTTPServer
from worker.errors import TransientError
from worker.retry import RetryPolicy, retry_counts
from worker.stores.http import HttpSource
from worker.transfer.config import TransferConfig
from worker.transfer.download import download
from worker.transfer.upload import upload

ATTEMPTS = 4


class Sleeps:
    """The policy's sleep: records each wait and moves a fake clock, without waiting."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def __call__(self, seconds: float, cancel: threading.Event | None) -> bool:
        self.slept.append(seconds)
        self.now += seconds
        return False


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


def config(sleeps: Sleeps, **kw: int) -> TransferConfig:
    policy = RetryPolicy(
        max_attempts=ATTEMPTS, budget_s=60.0, clock=sleeps.clock, sleep=sleeps, base_s=0.5
    )
    return dataclasses.replace(SMALL_CFG, max_attempts=ATTEMPTS, retry=policy, **kw)


def test_a_503_forever_costs_exactly_max_attempts_requests_per_file(
    server: TestHTTPServer, http: HttpSource, tmp_path: Path, sleeps: Sleeps
) -> None:
    """The first request of a download (stat and first range in one) meets 503 every time:
    exactly ``max_attempts`` requests, ``max_attempts - 1`` waits inside the budget, the 503
    as the error, no file, and the retries counted under ``http``."""
    server.put_file("/f.bin", b"x" * 5000)
    server.faults.fail_next("/f.bin", n=None, status=503)
    before = retry_counts().get("http", 0)
    with pytest.raises(TransientError, match="503"):
        download(http, server.url("/f.bin"), tmp_path / "f.bin", config(sleeps))
    assert len(server.requests_for("/f.bin")) == ATTEMPTS
    assert len(sleeps.slept) == ATTEMPTS - 1
    assert sum(sleeps.slept) <= 60.0
    assert retry_counts()["http"] - before == ATTEMPTS - 1
    assert not (tmp_path / "f.bin").exists() and leftovers(tmp_path) == []


def test_retry_after_is_honoured(
    server: TestHTTPServer, http: HttpSource, tmp_path: Path, sleeps: Sleeps
) -> None:
    """Two 503s that ask for ``Retry-After: 3``: the policy waits 3 s each time (longer than
    its backoff), then the third request downloads the file."""
    data = os.urandom(3000)
    server.put_file("/ra.bin", data)
    server.faults.fail_next("/ra.bin", n=2, status=503, headers={"Retry-After": "3"})
    got = download(http, server.url("/ra.bin"), tmp_path / "ra.bin", config(sleeps))
    assert got.digests == digests_of(data)
    assert sleeps.slept == [3.0, 3.0]
    assert len(server.requests_for("/ra.bin")) == 3


def test_a_chunk_answered_503_forever_costs_max_attempts_requests(
    server: TestHTTPServer, http: HttpSource, tmp_path: Path, sleeps: Sleeps
) -> None:
    """A chunked download (the object already stat-ed) whose ranges all get 503: the first
    chunk is tried exactly ``max_attempts`` times (one fetcher), then the download fails
    cleanly, without a part file."""
    server.put_file("/big.bin", os.urandom(640 * 1024))
    info = http.stat(server.url("/big.bin"))
    server.faults.fail_next("/big.bin", n=None, status=503)
    already = len(server.requests_for("/big.bin"))
    cfg = config(sleeps, concurrency=1)
    with pytest.raises(TransientError):
        download(http, server.url("/big.bin"), tmp_path / "big.bin", cfg, info=info)
    assert len(server.requests_for("/big.bin")) - already == ATTEMPTS
    assert len(sleeps.slept) == ATTEMPTS - 1
    assert leftovers(tmp_path) == [] and not (tmp_path / "big.bin").exists()


@pytest.fixture
def s3_on_503(server: TestHTTPServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """An S3 store whose endpoint is the test HTTP server, answering 503 to every request."""
    pytest.importorskip("boto3")
    from worker.stores.s3 import S3Store

    for var in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAHAULTEST00000001")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "haul-test-secret")
    server.faults.fail_next("*", n=None, status=503)
    store = S3Store("lake", "bucket", endpoint_url=server.url(""), region="us-east-1")
    yield store
    store.close()


def test_a_cloud_store_on_503_costs_max_attempts_requests_per_call(
    server: TestHTTPServer, s3_on_503: object, tmp_path: Path, sleeps: Sleeps
) -> None:
    """S3 answering 503 forever: a download and an upload (its existence check and its
    conditional create are separate calls) each cost ``max_attempts`` requests per call; the
    store itself makes one attempt (botocore's own retries are off)."""
    from worker.stores.s3 import S3Store

    store = s3_on_503
    assert isinstance(store, S3Store)
    before = retry_counts().get("s3", 0)
    with pytest.raises(TransientError):
        download(store, "data/in.bin", tmp_path / "in.bin", config(sleeps))
    assert len(server.requests) == ATTEMPTS
    assert retry_counts()["s3"] - before == ATTEMPTS - 1

    source = tmp_path / "out.bin"
    source.write_bytes(b"y" * 1000)
    with pytest.raises(TransientError):
        upload(store, source, lambda d: f"data/{d.sha256}", config(sleeps))
    # The first call of an upload (is the content there already?) fails for good.
    assert len(server.requests) == 2 * ATTEMPTS
