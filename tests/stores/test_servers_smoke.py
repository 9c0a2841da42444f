"""Each real local server starts and speaks its API through the real SDK."""

from __future__ import annotations

import os
import uuid

import pytest

from tests.support.servers import (
    AzuriteServer,
    FakeGcsServer,
    MotoServer,
    NginxServer,
    RedisServer,
    SwiftServer,
)

# Harmless when tests/conftest.py loads the same plugin.
pytest_plugins = ["tests.support.fixtures"]

pytestmark = pytest.mark.stores

DATA = os.urandom(1000)


def _name(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def test_redis_ping_and_restart_keeps_port(redis_private: RedisServer) -> None:
    import redis

    client = redis.Redis.from_url(redis_private.url, socket_timeout=5)
    assert client.ping() is True
    port, pid = redis_private.port, redis_private.pid
    redis_private.stop()
    assert not redis_private.is_running()
    with pytest.raises(redis.exceptions.ConnectionError):
        client.ping()
    redis_private.restart()
    assert redis_private.port == port
    assert redis_private.pid not in (None, pid)
    assert client.ping() is True  # redis-py reconnects to the same URL
    client.close()


def test_redis_shared_server_answers(redis_srv: RedisServer) -> None:
    import redis

    with redis.Redis.from_url(redis_srv.url, socket_timeout=5) as client:
        assert client.ping() is True
    assert redis_srv.url == f"redis://127.0.0.1:{redis_srv.port}/0"


def test_s3_put_get_range(s3_srv: MotoServer) -> None:

    s3 = s3_srv.client()
    bucket = _name()
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="a/b.bin", Body=DATA)
    resp = s3.get_object(Bucket=bucket, Key="a/b.bin", Range="bytes=100-199")
    assert resp["Body"].read() == DATA[100:200]
    assert resp["ContentRange"] == f"bytes 100-199/{len(DATA)}"


def test_azure_upload_download_range(azure_srv: AzuriteServer) -> None:
    from azure.storage.blob import BlobServiceClient

    with BlobServiceClient.from_connection_string(azure_srv.connection_string) as svc:
        container = svc.create_container(_name())
        container.upload_blob("a/b.bin", DATA)
        got = container.download_blob("a/b.bin", offset=100, length=100).readall()
        assert got == DATA[100:200]
        assert container.download_blob("a/b.bin").readall() == DATA


def test_gcs_upload_download_range(gcs_srv: FakeGcsServer) -> None:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(
        project=gcs_srv.project,
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        client_options={"api_endpoint": gcs_srv.endpoint},
    )
    bucket = client.create_bucket(_name())
    blob = bucket.blob("a/b.bin")
    blob.upload_from_string(DATA)
    assert bucket.blob("a/b.bin").download_as_bytes(start=100, end=199) == DATA[100:200]
    blob.reload()
    assert blob.size == len(DATA)
    assert blob.md5_hash is not None


def test_swift_put_get_range(swift_srv: SwiftServer) -> None:
    from swiftclient.client import Connection

    conn = Connection(
        authurl=swift_srv.auth_url, user=swift_srv.user, key=swift_srv.key, auth_version="1"
    )
    try:
        container = _name()
        conn.put_container(container)
        etag = conn.put_object(container, "a/b.bin", DATA)
        headers, body = conn.get_object(container, "a/b.bin", headers={"Range": "bytes=100-199"})
        assert body == DATA[100:200]
        assert headers["etag"] == etag
        assert conn.url == swift_srv.storage_url
    finally:
        conn.close()


def test_nginx_get_range(nginx_srv: NginxServer) -> None:
    import httpx

    name = f"{_name()}.bin"
    (nginx_srv.root / name).write_bytes(DATA)
    with httpx.Client(base_url=nginx_srv.base_url, trust_env=False, timeout=10) as http:
        resp = http.get(f"/{name}", headers={"Range": "bytes=100-199"})
        assert resp.status_code == 206
        assert resp.content == DATA[100:200]
        assert http.get(f"/norange/{name}", headers={"Range": "bytes=100-199"}).content == DATA
        put = http.put(f"/upload/x/{name}", content=DATA)
        assert put.status_code == 201
        assert (nginx_srv.root / "upload" / "x" / name).read_bytes() == DATA
        listing = http.get("/").json()
        assert any(entry["name"] == name for entry in listing)
