"""A real worker per store whose every request to its server goes through a fault proxy.

Each store kind (the four cloud emulators and the HTTP test server) gets one module-scoped
worker with small transfer settings, so a few hundred kB are enough for chunked ranged reads
(64 KiB chunks above 128 KiB), and a short ``http_timeout_s`` so a stalled answer is given up
on quickly. The worker reaches its server only through a :class:`FaultProxy`; the tests reach
the same server directly (the SDK, or the HTTP server's folder) to put inputs and to check
what haul wrote.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e_stores.conftest import (
    KINDS,
    PREFIX,
    PROJECT,
    Bucket,
    Lake,
    open_bucket,
    running_lake,
)
from tests.support.faultproxy import FaultProxy, fault_proxy
from tests.support.httpserver import serve
from tests.support.servers import RedisServer

KiB = 1024
#: every store's requests, and the plain HTTP server
ALL_KINDS = (*KINDS, "http")
CHUNK_BYTES = 64 * KiB
THRESHOLD_BYTES = 128 * KiB
MAX_ATTEMPTS = 3
#: short enough that a stall costs little, long enough for a busy 2-core machine
HTTP_TIMEOUT_S = 3.0
#: how long a stalled answer is held back: well past the read timeout
STALL_S = 3 * HTTP_TIMEOUT_S

FAULT_ENV = {
    "HAUL_CHUNK_SIZE_BYTES": str(CHUNK_BYTES),
    "HAUL_MULTIPART_THRESHOLD_BYTES": str(THRESHOLD_BYTES),
    "HAUL_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
    "HAUL_HTTP_TIMEOUT_S": str(HTTP_TIMEOUT_S),
    "HAUL_CONCURRENCY": "2",
    "HAUL_CACHE_ENABLED": "false",
    "HAUL_ALLOW_PRIVATE_ADDRESSES": "true",
    f"HAUL_PROJECTS__{PROJECT.upper()}__STORE": "lake",
}


class HttpBucket(Bucket):
    """The test HTTP server's folder, seen as a read-only "bucket" of http:// URLs."""

    kind = "http"

    def __init__(self, root: Path, base: str) -> None:
        self.root = root
        self.name = "www"
        self.base = base

    def url(self, key: str) -> str:
        return f"{self.base}/{key}"

    def put(self, key: str, data: bytes) -> None:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)  # atomic: a reader sees the old file or the new one

    def get(self, key: str) -> bytes:
        return (self.root / key).read_bytes()

    def exists(self, key: str) -> bool:
        return (self.root / key).is_file()

    def keys(self, prefix: str) -> list[str]:
        base = self.root / prefix
        return [str(p.relative_to(self.root)) for p in base.rglob("*") if p.is_file()]

    def version(self, key: str) -> str:
        st = (self.root / key).stat()
        return f"{st.st_ino}-{st.st_mtime_ns}-{st.st_size}"

    def parts(self, key: str) -> int | None:
        return None

    def store_settings(self) -> dict[str, str]:
        raise NotImplementedError("http is a source only; outputs go to a local store")

    def credentials_env(self) -> dict[str, str]:
        return {}

    def env(self, store: str) -> dict[str, str]:
        return {}


@dataclass
class Faulty:
    """A worker, the bucket behind its store and the proxy in between."""

    kind: str
    lake: Lake
    bucket: Bucket
    proxy: FaultProxy

    def stored(self, key: str) -> bytes | None:
        """The bytes at ``key`` of the store, read directly (None: absent)."""
        return self.bucket.get(key) if self.bucket.exists(key) else None


def output_key(data: bytes, name: str) -> str:
    sha = hashlib.sha256(data).hexdigest()
    return f"{PREFIX}/data/{PROJECT}/{sha[:2]}/{sha}/{name}"


@pytest.fixture(scope="module", params=ALL_KINDS)
def faulty(
    request: pytest.FixtureRequest,
    redis_srv: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Faulty]:
    kind = request.param
    data_dir = tmp_path_factory.mktemp(f"faults-{kind}")
    if kind == "http":
        root = tmp_path_factory.mktemp("www")
        # http is a source only: outputs go to a local folder (no network, nothing to fault)
        store = tmp_path_factory.mktemp("local-store")
        with serve(root) as srv, fault_proxy(srv.base_url, flavour="http", stall_s=STALL_S) as px:
            bucket = HttpBucket(root, px.url)
            env = FAULT_ENV | {
                "HAUL_STORES__LAKE__TYPE": "local",
                "HAUL_STORES__LAKE__PATH": str(store),
            }
            with running_lake(redis_srv, data_dir, {}, env) as lake:
                yield Faulty(kind, lake, bucket, px)
        return
    bucket = open_bucket(kind, request)
    try:
        with fault_proxy(bucket.base, flavour=kind, stall_s=STALL_S) as px:
            bucket.route_via(px.url)
            with running_lake(redis_srv, data_dir, {"lake": bucket}, FAULT_ENV) as lake:
                yield Faulty(kind, lake, bucket, px)
    finally:
        bucket.close()


@pytest.fixture
def proxy(faulty: Faulty) -> Iterator[FaultProxy]:
    """The module's proxy, with no rules, plan or records left from an earlier test."""
    faulty.proxy.reset()
    yield faulty.proxy
    faulty.proxy.reset()


def random_bytes(n: int) -> bytes:
    return os.urandom(n)
