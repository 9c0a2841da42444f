"""Fixtures of the store contract suite: one fresh bucket/container per test, per backend.

Each :class:`Harness` builds the backend under test against its real local server (the
session-scoped ``*_srv`` fixtures of ``tests.support.fixtures``) with small thresholds, so the
multipart / block / resumable / SLO paths run on a few MiB of data.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import pytest

from worker.stores.base import Store
from worker.stores.plugin import StoreTuning

MiB = 1024 * 1024
KINDS = ["local", "s3", "azure", "gcs", "swift"]
# Small numbers so multipart paths run on little data (S3 parts must be >= 5 MiB).
SMALL = StoreTuning(multipart_threshold_bytes=6 * MiB, part_size_bytes=5 * MiB)


def _args(kw: dict[str, Any]) -> dict[str, Any]:
    """Constructor arguments from ``make(**kw)``: tuning fields go into a StoreTuning."""
    names = {f.name for f in fields(StoreTuning)}
    tuned = {k: v for k, v in kw.items() if k in names}
    return {k: v for k, v in kw.items() if k not in names} | {"tuning": replace(SMALL, **tuned)}


@dataclass
class Harness:
    """A backend under test: ``store`` on a fresh bucket, and ways to build variants of it."""

    kind: str
    store: Store
    #: build another store of the same kind on the same bucket with other constructor args
    make: Callable[..., Store]
    #: a store on a bucket/container that does not exist
    missing_bucket: Callable[[], Store]
    #: (store with wrong credentials, the secret strings that must never show) or None
    wrong_credentials: Callable[[], tuple[Store, list[str]]] | None = None
    #: the session server object (tests.support.servers), None for local
    server: Any = None


def _bucket() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def _local(tmp_path: Path, request: pytest.FixtureRequest) -> Harness:
    from worker.stores.local import LocalStore

    root = tmp_path / "store"
    root.mkdir()

    def make(**_: Any) -> Store:
        return LocalStore("local", root)

    return Harness("local", make(), make, lambda: LocalStore("local", tmp_path / "absent"))


def _s3(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Harness:
    import boto3

    from worker.stores.s3 import S3Store

    srv = request.getfixturevalue("s3_srv")
    for var in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", srv.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", srv.secret_access_key)
    bucket = _bucket()
    boto3.client("s3", endpoint_url=srv.endpoint_url, region_name=srv.region).create_bucket(
        Bucket=bucket
    )

    def make(bucket: str = bucket, **kw: Any) -> Store:
        args = _args(kw)
        return S3Store("s3", bucket, endpoint_url=srv.endpoint_url, region=srv.region, **args)

    def wrong() -> tuple[Store, list[str]]:
        # moto does not verify signatures, so the call fails with NotFound, not 403.
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAHAULWRONGKEY0001")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "haul-wrong-secret-5eCr3t")
        store = make(bucket="t-missing-" + uuid.uuid4().hex[:8])
        return store, ["AKIAHAULWRONGKEY0001", "haul-wrong-secret-5eCr3t"]

    return Harness("s3", make(), make, lambda: make(bucket=_bucket()), wrong, srv)


def _azure(request: pytest.FixtureRequest) -> Harness:
    from azure.storage.blob import BlobServiceClient

    from worker.stores.azure import AzureStore

    srv = request.getfixturevalue("azure_srv")
    container = _bucket()
    with BlobServiceClient.from_connection_string(srv.connection_string) as svc:
        svc.create_container(container)

    def make(
        container: str = container, connection_string: str = srv.connection_string, **kw: Any
    ) -> Store:
        return AzureStore("azure", container, connection_string=connection_string, **_args(kw))

    def wrong() -> tuple[Store, list[str]]:
        bad_key = "aGF1bC13cm9uZy1rZXktZm9yLXRlc3RzLW9ubHktMDEyMzQ1Njc4OQ=="
        conn = srv.connection_string.replace(srv.account_key, bad_key)
        return make(connection_string=conn), [bad_key, srv.account_key]

    return Harness("azure", make(), make, lambda: make(container=_bucket()), wrong, srv)


def _gcs(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Harness:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    from worker.stores.gcs import GCSStore

    srv = request.getfixturevalue("gcs_srv")
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    bucket = _bucket()
    client = storage.Client(
        project=srv.project,
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": srv.endpoint},
    )
    client.create_bucket(bucket)

    def make(bucket: str = bucket, **kw: Any) -> Store:
        return GCSStore("gcs", bucket, endpoint_url=srv.endpoint, project=srv.project, **_args(kw))

    # fake-gcs-server accepts every request anonymously: no wrong-credentials case to test.
    return Harness("gcs", make(), make, lambda: make(bucket=_bucket()), None, srv)


def _swift(request: pytest.FixtureRequest) -> Harness:
    from swiftclient.client import Connection

    from worker.stores.swift import SwiftAuth, SwiftStore

    srv = request.getfixturevalue("swift_srv")
    container = _bucket()
    conn = Connection(authurl=srv.auth_url, user=srv.user, key=srv.key, auth_version="1")
    conn.put_container(container)
    conn.close()

    def make(container: str = container, key: str = srv.key, **kw: Any) -> Store:
        auth = SwiftAuth(auth_url=srv.auth_url, auth_version="1", user=srv.user, key=key)
        return SwiftStore("swift", container, auth, project=srv.project, **_args(kw))

    def wrong() -> tuple[Store, list[str]]:
        return make(key="haul-wrong-swift-key-7c1d"), ["haul-wrong-swift-key-7c1d"]

    return Harness("swift", make(), make, lambda: make(container=_bucket()), wrong, srv)


@pytest.fixture(params=KINDS)
def harness(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Harness]:
    """The backend under test on a fresh bucket/container of its real server."""
    kind = request.param
    if kind == "local":
        h = _local(tmp_path, request)
    elif kind == "s3":
        h = _s3(request, monkeypatch)
    elif kind == "azure":
        h = _azure(request)
    elif kind == "gcs":
        h = _gcs(request, monkeypatch)
    else:
        h = _swift(request)
    yield h
    h.store.close()


@pytest.fixture
def make_file(tmp_path: Path) -> Callable[[bytes], Path]:
    """Write ``data`` to a fresh local file and return its path."""

    def make(data: bytes) -> Path:
        path = tmp_path / f"src-{uuid.uuid4().hex[:8]}"
        path.write_bytes(data)
        return path

    return make
