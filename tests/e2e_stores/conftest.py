"""End to end against the cloud stores: a real Celery worker whose settings declare a store on a
real local server (moto, Azurite, fake-gcs-server, a one-node Swift), driven as an orchestrator
would drive it.

The worker learns about the store only the way an operator would tell it: ``HAUL_STORES__<NAME>__*``
settings, a ``HAUL_PROJECTS__<PROJECT>__STORE`` mapping, and the SDK's own credential variables.
The tests reach the same bucket/container through the SDK directly (:class:`Bucket`) to put
inputs and to check what haul wrote. One bucket per kind per module; one worker per kind per
module; one Redis database per worker.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import subprocess
import sys
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from redis import Redis

from tests.e2e_stores.proxy import CorruptingProxy
from tests.integration.conftest import Haul
from tests.support.servers import (
    AzuriteServer,
    FakeGcsServer,
    MotoServer,
    RedisServer,
    SwiftServer,
)
from tests.support.worker import start_worker, worker_env

MiB = 1024 * 1024
KINDS = ("s3", "azure", "gcs", "swift")
#: the store prefix every lake store gets, so keys are haul/data/... and haul/datums/...
PREFIX = "haul"
#: the project the worker maps to the lake store (settings keys from env are lower case)
PROJECT = "lakeproj"
#: small enough that a 11 MiB output goes up in parts (S3's minimum part is 5 MiB)
PART_BYTES = 5 * MiB

HAUL_LOG_LINE = re.compile(
    r"^\d\d:\d\d:\d\d (?P<path>/\S+): (?P<fact>downloaded, \d+(\.\d)? (B|kB|MB|GB)|"
    r"md5 sum: [0-9a-f]{32}|sha1 sum: [0-9a-f]{40}|sha256 sum: [0-9a-f]{64}|warning: .+|"
    r"failed: .+)$"
)


def sums(data: bytes) -> dict[str, str]:
    return {
        "md5": hashlib.md5(data).hexdigest(),
        "sha1": hashlib.sha1(data).hexdigest(),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def tag() -> str:
    return uuid.uuid4().hex[:10]


def bucket_name(module: str) -> str:
    """A fresh bucket/container name (3-63 chars, lower case) for one module."""
    short = re.sub(r"[^a-z0-9]", "", module.rsplit(".", 1)[-1].lower())[:20]
    return f"e2e-{short}-{uuid.uuid4().hex[:8]}"


# ------------------------------------------------------------------------------ SDK side


class Bucket(ABC):
    """One bucket/container of a real local server, reached with the store's own SDK."""

    kind: str
    name: str
    #: where the worker reaches the server: its own address, or a proxy in front of it
    base: str

    def route_via(self, base: str) -> None:
        """Send the worker's requests to ``base`` (a proxy in front of the real server)."""
        self.base = base

    @abstractmethod
    def url(self, key: str) -> str:
        """The input URL of ``key`` (``s3://bucket/key`` ...)."""

    @abstractmethod
    def put(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def get(self, key: str) -> bytes: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def keys(self, prefix: str) -> list[str]:
        """Every key below ``prefix`` (live objects only)."""

    @abstractmethod
    def version(self, key: str) -> str:
        """What changes when the object is written again (ETag, generation, ...)."""

    @abstractmethod
    def parts(self, key: str) -> int | None:
        """How many parts/blocks/segments the object was assembled from; None if not visible."""

    @abstractmethod
    def store_settings(self) -> dict[str, str]:
        """The store's settings keys (``type``, ``bucket``, ``prefix`` ...), as an operator sets."""

    @abstractmethod
    def credentials_env(self) -> dict[str, str]:
        """The SDK's own credential variables for the worker's environment."""

    def env(self, store: str) -> dict[str, str]:
        """Worker environment that declares this bucket as the store ``store``."""
        up = store.upper()
        out = {f"HAUL_STORES__{up}__{k.upper()}": v for k, v in self.store_settings().items()}
        return out | self.credentials_env()

    def close(self) -> None:
        return None


class S3Bucket(Bucket):
    kind = "s3"

    def __init__(self, srv: MotoServer, name: str, *, versioned: bool = False) -> None:

        self.srv = srv
        self.name = name
        self.base = srv.endpoint_url
        self.client = srv.client()
        self.client.create_bucket(Bucket=name)
        if versioned:
            self.client.put_bucket_versioning(
                Bucket=name, VersioningConfiguration={"Status": "Enabled"}
            )

    def url(self, key: str) -> str:
        return f"s3://{self.name}/{key}"

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.name, Key=key, Body=data)

    def get(self, key: str) -> bytes:
        body: bytes = self.client.get_object(Bucket=self.name, Key=key)["Body"].read()
        return body

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.name, Key=key)
        except ClientError as exc:
            if exc.response["ResponseMetadata"]["HTTPStatusCode"] == 404:
                return False
            raise
        return True

    def keys(self, prefix: str) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.name, Prefix=prefix
        )
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def versions(self, key: str) -> list[str]:
        """Every version id and delete marker of exactly ``key`` (versioned buckets)."""
        resp = self.client.list_object_versions(Bucket=self.name, Prefix=key)
        entries = resp.get("Versions", []) + resp.get("DeleteMarkers", [])
        return [e["VersionId"] for e in entries if e["Key"] == key]

    def version(self, key: str) -> str:
        head = self.client.head_object(Bucket=self.name, Key=key)
        return f"{head['ETag']}|{head.get('VersionId')}"

    def parts(self, key: str) -> int | None:
        etag = str(self.client.head_object(Bucket=self.name, Key=key)["ETag"]).strip('"')
        return int(etag.rsplit("-", 1)[1]) if "-" in etag else 1

    def store_settings(self) -> dict[str, str]:
        return {
            "type": "s3",
            "bucket": self.name,
            "endpoint_url": self.base,
            "region": self.srv.region,
            "prefix": PREFIX,
        }

    def credentials_env(self) -> dict[str, str]:
        return self.srv.credentials_env()


class AzureBucket(Bucket):
    kind = "azure"

    def __init__(self, srv: AzuriteServer, name: str) -> None:
        from azure.storage.blob import BlobServiceClient

        self.srv = srv
        self.name = name
        self.base = srv.account_url.rsplit("/", 1)[0]
        self.service = BlobServiceClient.from_connection_string(srv.connection_string)
        self.container = self.service.create_container(name)

    def url(self, key: str) -> str:
        return f"azure://{self.srv.account_name}/{self.name}/{key}"

    def put(self, key: str, data: bytes) -> None:
        self.container.upload_blob(key, data, overwrite=True)

    def get(self, key: str) -> bytes:
        return bytes(self.container.download_blob(key).readall())

    def exists(self, key: str) -> bool:
        return bool(self.container.get_blob_client(key).exists())

    def keys(self, prefix: str) -> list[str]:
        return [b.name for b in self.container.list_blobs(name_starts_with=prefix)]

    def version(self, key: str) -> str:
        return str(self.container.get_blob_client(key).get_blob_properties().etag)

    def parts(self, key: str) -> int | None:
        committed, _ = self.container.get_blob_client(key).get_block_list("committed")
        return len(committed) or 1

    def state_md5(self, key: str, md5_hex: str) -> None:
        """Make the blob state a Content-MD5 of our choosing (Set Blob Properties)."""
        from azure.storage.blob import ContentSettings

        self.container.get_blob_client(key).set_http_headers(
            ContentSettings(content_md5=bytearray.fromhex(md5_hex))
        )

    def store_settings(self) -> dict[str, str]:
        return {"type": "azure", "container": self.name, "prefix": PREFIX}

    def credentials_env(self) -> dict[str, str]:
        origin = self.srv.account_url.rsplit("/", 1)[0]
        conn = self.srv.connection_string.replace(origin, self.base)
        return {"AZURE_STORAGE_CONNECTION_STRING": conn}

    def close(self) -> None:
        self.service.close()


class GCSBucket(Bucket):
    kind = "gcs"

    def __init__(self, srv: FakeGcsServer, name: str) -> None:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        self.srv = srv
        self.name = name
        self.base = srv.endpoint
        self.client = storage.Client(
            project=srv.project,
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            client_options={"api_endpoint": srv.endpoint},
        )
        self.bucket = self.client.create_bucket(name)

    def url(self, key: str) -> str:
        return f"gs://{self.name}/{key}"

    def put(self, key: str, data: bytes, *, stated_md5: str | None = None) -> None:
        """Upload; ``stated_md5`` (hex) makes the object state that md5Hash instead."""
        blob = self.bucket.blob(key)
        if stated_md5 is not None:
            blob.md5_hash = base64.b64encode(bytes.fromhex(stated_md5)).decode()
        blob.upload_from_string(data, checksum=None)

    def get(self, key: str) -> bytes:
        return bytes(self.bucket.blob(key).download_as_bytes())

    def exists(self, key: str) -> bool:
        return bool(self.bucket.blob(key).exists())

    def keys(self, prefix: str) -> list[str]:
        return [b.name for b in self.client.list_blobs(self.name, prefix=prefix)]

    def version(self, key: str) -> str:
        blob = self.bucket.get_blob(key)
        assert blob is not None, key
        return str(blob.generation)

    def stated_md5(self, key: str) -> str | None:
        blob = self.bucket.get_blob(key)
        assert blob is not None, key
        return base64.b64decode(blob.md5_hash).hex() if blob.md5_hash else None

    def parts(self, key: str) -> int | None:
        return None  # a resumable upload leaves no trace on the object

    def store_settings(self) -> dict[str, str]:
        return {"type": "gcs", "bucket": self.name, "prefix": PREFIX}

    def credentials_env(self) -> dict[str, str]:
        return {"STORAGE_EMULATOR_HOST": self.base}

    def close(self) -> None:
        self.client.close()


class SwiftBucket(Bucket):
    kind = "swift"

    def __init__(self, srv: SwiftServer, name: str) -> None:
        from swiftclient.client import Connection

        self.srv = srv
        self.name = name
        self.base = srv.auth_url.removesuffix("/auth/v1.0")
        self.conn = Connection(authurl=srv.auth_url, user=srv.user, key=srv.key, auth_version="1")
        self.conn.put_container(name)

    def url(self, key: str) -> str:
        return f"swift://{self.srv.project}/{self.name}/{key}"

    def put(self, key: str, data: bytes) -> None:
        self.conn.put_object(self.name, key, data)

    def get(self, key: str) -> bytes:
        _, body = self.conn.get_object(self.name, key)
        return bytes(body)

    def exists(self, key: str) -> bool:
        from swiftclient.exceptions import ClientException

        try:
            self.conn.head_object(self.name, key)
        except ClientException as exc:
            if exc.http_status == 404:
                return False
            raise
        return True

    def keys(self, prefix: str, container: str | None = None) -> list[str]:
        from swiftclient.exceptions import ClientException

        try:
            _, entries = self.conn.get_container(
                container or self.name, prefix=prefix, full_listing=True
            )
        except ClientException as exc:
            if exc.http_status == 404:
                return []
            raise
        return [e["name"] for e in entries]

    def segment_keys(self, prefix: str) -> list[str]:
        return self.keys(prefix, container=f"{self.name}_segments")

    def version(self, key: str) -> str:
        head = self.conn.head_object(self.name, key)
        return f"{head.get('etag')}|{head.get('x-timestamp')}"

    def parts(self, key: str) -> int | None:
        head = self.conn.head_object(self.name, key)
        if head.get("x-static-large-object", "").lower() != "true":
            return 1
        _, manifest = self.conn.get_object(self.name, key, query_string="multipart-manifest=get")
        return len(json.loads(manifest))

    def store_settings(self) -> dict[str, str]:
        return {
            "type": "swift",
            "auth_url": self.base + "/auth/v1.0",
            "project": self.srv.project,
            "container": self.name,
            "prefix": PREFIX,
        }

    def credentials_env(self) -> dict[str, str]:
        return {"ST_USER": self.srv.user, "ST_KEY": self.srv.key}

    def close(self) -> None:
        self.conn.close()


def open_bucket(kind: str, request: pytest.FixtureRequest, *, versioned: bool = False) -> Bucket:
    """A fresh bucket/container on the session server of ``kind`` (skips/fails like it)."""
    srv = request.getfixturevalue(f"{kind}_srv")
    name = bucket_name(request.module.__name__ if request.module else "e2e")
    if kind == "s3":
        return S3Bucket(srv, name, versioned=versioned)
    if kind == "azure":
        return AzureBucket(srv, name)
    if kind == "gcs":
        return GCSBucket(srv, name)
    if kind == "swift":
        return SwiftBucket(srv, name)
    raise ValueError(kind)


# ------------------------------------------------------------------------------ worker side


@contextmanager
def claim_db(redis_srv: RedisServer, owner: str) -> Iterator[str]:
    """A Redis database of the shared server that nothing else uses; flushed afterwards."""
    for db in range(2, 16):  # 0: default, 1: tests/integration (flushes it at start)
        client: Redis[bytes] = Redis.from_url(redis_srv.url_for_db(db))
        try:
            if client.set("haul-test:claimed", owner, nx=True):
                try:
                    yield redis_srv.url_for_db(db)
                finally:
                    client.flushdb()
                return
        finally:
            client.close()
    pytest.fail("no free Redis database on the test server")


@dataclass
class Lake:
    """A running worker, what it was told, and the bucket(s) behind its store(s)."""

    haul: Haul
    env: dict[str, str]
    buckets: dict[str, Bucket] = field(default_factory=dict)
    #: the proxy between the worker and its store's server, when there is one
    proxy: CorruptingProxy | None = None
    #: an offset into the worker's log, so a test can read only what came after it
    log_mark: int = 0

    def mark_log(self) -> None:
        self.log_mark = len(self.haul.worker.log_text())

    def log_since_mark(self) -> str:
        return str(self.haul.worker.log_text()[self.log_mark :])

    @property
    def bucket(self) -> Bucket:
        return self.buckets["lake"]

    def run(self, task: str, message: Mapping[str, Any], timeout: float = 90) -> tuple[str, Any]:
        return self.haul.run(task, dict(message), timeout)

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``python -m worker.cli ARGS`` with the worker's own settings and credentials."""
        env = worker_env(self.haul.redis_url, self.haul.data_dir, self.env)
        return subprocess.run(
            [sys.executable, "-m", "worker.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def events(self, subject: str | None = None, type_: str | None = None) -> list[dict[str, Any]]:
        return self.haul.events(subject, type_)

    def exec_dir(self, execution_id: str) -> Path:
        return self.haul.exec_dir(execution_id)

    def outputs(self, execution_id: str) -> Path:
        out = self.exec_dir(execution_id) / "outputs"
        out.mkdir(parents=True, exist_ok=True)
        return out


#: settings every e2e worker gets: parts of 5 MiB above 5 MiB, a few retries, quick backoff
BASE_ENV = {
    "HAUL_MULTIPART_THRESHOLD_BYTES": str(PART_BYTES),
    "HAUL_CHUNK_SIZE_BYTES": str(PART_BYTES),
    "HAUL_CONCURRENCY": "4",
    "HAUL_MAX_ATTEMPTS": "3",
}


@contextmanager
def running_lake(
    redis_srv: RedisServer,
    data_dir: Path,
    buckets: Mapping[str, Bucket],
    extra_env: Mapping[str, str] | None = None,
) -> Iterator[Lake]:
    """One worker whose settings declare every bucket of ``buckets`` as the store of that name."""
    env = dict(BASE_ENV)
    for store, bucket in buckets.items():
        env |= bucket.env(store)
    env |= dict(extra_env or {})
    with (
        claim_db(redis_srv, str(data_dir)) as url,
        start_worker(url, data_dir, extra_env=env, concurrency=2) as w,
    ):
        yield Lake(Haul(url, data_dir, w), env, dict(buckets))


@pytest.fixture(scope="module", params=KINDS)
def lake(
    request: pytest.FixtureRequest,
    redis_srv: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Lake]:
    """One worker per store kind for the module: its store ``lake`` is a fresh bucket (S3:
    versioned) and the project ``lakeproj`` keeps its outputs there."""
    bucket = open_bucket(request.param, request, versioned=request.param == "s3")
    try:
        with running_lake(
            redis_srv,
            tmp_path_factory.mktemp(f"lake-{request.param}"),
            {"lake": bucket},
            {f"HAUL_PROJECTS__{PROJECT.upper()}__STORE": "lake"},
        ) as lk:
            yield lk
    finally:
        bucket.close()
