"""Retries no longer nest: a store that answers 503 forever costs exactly ``max_attempts``
requests per call, for an input and for an output.

Before the redesign each cloud store retried inside (5 attempts) and the engine retried the
store (``max_attempts``), so one persistent 503 cost up to 25 requests per file. The store here
is the real S3 backend (boto3 and the presigned fast path) pointed at the test HTTP server,
which answers every request 503 and counts them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.engine.conftest import SMALL_CFG
from tests.support.httpserver import TestHTTPServer
from worker.errors import TransientError
from worker.stores.s3 import S3Store
from worker.transfer.download import download
from worker.transfer.upload import upload


@pytest.fixture
def s3_on_503(server: TestHTTPServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Store]:
    for var, value in {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}.items():
        monkeypatch.setenv(var, value)
    server.faults.fail_next("*", n=10_000, status=503)
    store = S3Store("s3", "bkt", endpoint_url=server.base_url, region="us-east-1")
    yield store
    store.close()


def test_a_persistent_503_costs_max_attempts_requests_per_input(
    server: TestHTTPServer, s3_on_503: S3Store, tmp_path: Path
) -> None:
    """The input fails as transient after exactly ``max_attempts`` requests (not 5x that)."""
    with pytest.raises(TransientError):
        download(s3_on_503, "data.bin", tmp_path / "data.bin", SMALL_CFG)
    assert len(server.requests) == SMALL_CFG.max_attempts
    assert not (tmp_path / "data.bin").exists()


def test_a_persistent_503_costs_max_attempts_requests_per_output(
    server: TestHTTPServer, s3_on_503: S3Store, tmp_path: Path
) -> None:
    """Storing an output against a store that answers 503 forever gives up after exactly
    ``max_attempts`` attempts, each a single request (the "already stored?" check)."""
    path = tmp_path / "out.txt"
    path.write_bytes(b"hello")
    with pytest.raises(TransientError):
        upload(s3_on_503, path, lambda d: f"data/{d.sha256}/out.txt", SMALL_CFG)
    assert len(server.requests) == SMALL_CFG.max_attempts
