"""Shared pieces for the transfer engine tests: a real threaded HTTP server and small chunks."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.httpserver import TestHTTPServer, serve
from worker.hashing import Digests
from worker.stores.http import HttpSource
from worker.transfer.config import TransferConfig

KiB = 1024

#: small numbers so a few hundred KiB exercise every path (chunks, pool, retries)
SMALL_CFG = TransferConfig(
    chunk_size_bytes=64 * KiB,
    concurrency=4,
    multipart_threshold_bytes=128 * KiB,
    files_in_flight=8,
    max_attempts=4,
    backoff_base_s=0.001,
    backoff_max_s=0.01,
)


def digests_of(data: bytes) -> Digests:
    return Digests(
        hashlib.md5(data).hexdigest(),
        hashlib.sha1(data).hexdigest(),
        hashlib.sha256(data).hexdigest(),
        len(data),
    )


def leftovers(folder: Path) -> list[str]:
    """Part files and records left in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if ".haul-part" in p.name)


@pytest.fixture
def www(tmp_path: Path) -> Path:
    root = tmp_path / "www"
    root.mkdir()
    return root


@pytest.fixture
def server(www: Path) -> Iterator[TestHTTPServer]:
    with serve(www) as srv:
        yield srv


@pytest.fixture
def http() -> Iterator[HttpSource]:
    source = HttpSource(allow_private=True, timeout_s=30.0)
    yield source
    source.close()


@pytest.fixture
def blob() -> bytes:
    """640 KiB: ten 64 KiB chunks, the last one shorter than the others would be."""
    return os.urandom(640 * KiB - 1000)
