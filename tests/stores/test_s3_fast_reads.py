"""S3 ranged reads through presigned URLs and http.client, and the way back to boto3."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from tests.support.faultproxy import Fault, fault_proxy
from tests.support.httpserver import TestHTTPServer, serve
from tests.support.servers import MotoServer
from worker.errors import Changed, HaulError, NotFound, SourceError, TransientError
from worker.net.pool import FastBody, FastClient
from worker.stores._stream import read_all
from worker.stores.plugin import StoreTuning
from worker.stores.s3 import S3Store, S3StoreConfig


@pytest.fixture
def creds(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAHAULFASTREAD0001")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "haul-fast-read-secret-5eCr3t")


@pytest.fixture
def moto_store(s3_srv: MotoServer, creds: None) -> Iterator[S3Store]:
    bucket = "fast-" + uuid.uuid4().hex[:12]
    store = S3Store("s3", bucket, endpoint_url=s3_srv.endpoint_url, region=s3_srv.region)
    store._client.create_bucket(Bucket=bucket)
    yield store
    store.close()


def test_ranges_come_through_presigned_urls_without_leaking_them(
    moto_store: S3Store, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="worker")
    data = os.urandom(300_000)
    moto_store._client.put_object(Bucket=moto_store.bucket, Key="k/data.bin", Body=data)
    info = moto_store.stat("k/data.bin")
    with moto_store.read("k/data.bin", start=1000, length=5000, pin=info) as body:
        assert isinstance(body, FastBody)
        assert read_all(body) == data[1000:6000]
    with moto_store.read("k/data.bin", start=299_000, pin=info) as body:
        assert read_all(body) == data[299_000:]
    assert moto_store._fast_reads
    for secret in ("haul-fast-read-secret-5eCr3t", "X-Amz-Signature", "AKIAHAULFASTREAD0001"):
        assert secret not in caplog.text


def test_a_replaced_object_is_changed_on_the_fast_path(moto_store: S3Store) -> None:
    client = moto_store._client
    client.put_object(Bucket=moto_store.bucket, Key="r.bin", Body=b"one" * 1000)
    info = moto_store.stat("r.bin")
    client.put_object(Bucket=moto_store.bucket, Key="r.bin", Body=b"two" * 1000)
    with pytest.raises(Changed), moto_store.read("r.bin", start=0, length=100, pin=info):
        pass
    assert moto_store._fast_reads  # a 412 is an answer, not a reason to leave the fast path


@pytest.fixture
def fake_s3(tmp_path: Path, creds: None) -> Iterator[tuple[TestHTTPServer, S3Store]]:
    """The test HTTP server posing as a path-style S3 endpoint (it ignores signatures)."""
    root = tmp_path / "www"
    (root / "bkt").mkdir(parents=True)
    with serve(root) as srv:
        store = S3Store("s3", "bkt", endpoint_url=srv.base_url, region="us-east-1")
        yield srv, store
        store.close()


def test_an_answer_the_fast_path_cannot_use_hands_over_to_boto3(
    fake_s3: tuple[TestHTTPServer, S3Store],
) -> None:
    srv, store = fake_s3
    data = os.urandom(50_000)
    srv.put_file("/bkt/obj.bin", data)
    info = store.stat("obj.bin")
    srv.faults.fail_next("/bkt/obj.bin", status=400, method="GET")
    with store.read("obj.bin", start=10, length=20_000, pin=info) as body:
        assert not isinstance(body, FastBody)
        assert read_all(body) == data[10:20_010]
    assert not store._fast_reads
    gets = srv.requests_for("/bkt/obj.bin", "GET")
    assert len(gets) == 2
    assert "X-Amz-Signature=" in gets[0].query  # presigned
    assert "authorization" in gets[1].headers  # boto3's signed request


def test_a_temporary_error_on_the_fast_path_is_retryable(
    fake_s3: tuple[TestHTTPServer, S3Store],
) -> None:
    srv, store = fake_s3
    srv.put_file("/bkt/obj.bin", b"x" * 1000)
    info = store.stat("obj.bin")
    srv.faults.fail_next("/bkt/obj.bin", status=503, method="GET")
    with pytest.raises(TransientError) as err, store.read("obj.bin", length=10, pin=info):
        pass
    assert err.value.retryable
    assert "X-Amz" not in str(err.value)
    assert store._fast_reads
    with store.read("obj.bin", length=10, pin=info) as body:
        assert read_all(body) == b"x" * 10


def test_fast_reads_can_be_turned_off(fake_s3: tuple[TestHTTPServer, S3Store], creds: None) -> None:
    srv, _ = fake_s3
    srv.put_file("/bkt/obj.bin", b"y" * 100)
    store = S3Store("s3", "bkt", endpoint_url=srv.base_url, region="us-east-1", fast_reads=False)
    info = store.stat("obj.bin")
    with store.read("obj.bin", length=10, pin=info) as body:
        assert not isinstance(body, FastBody)
        assert read_all(body) == b"y" * 10


def test_a_missing_object_is_not_found_and_keeps_the_fast_path(
    fake_s3: tuple[TestHTTPServer, S3Store],
) -> None:
    srv, store = fake_s3
    srv.put_file("/bkt/obj.bin", b"z" * 100)
    info = store.stat("obj.bin")
    (srv.root / "bkt" / "obj.bin").unlink()
    with pytest.raises(NotFound), store.read("obj.bin", length=10, pin=info):
        pass
    assert store._fast_reads


def test_a_connection_error_before_the_fast_path_ever_worked_is_raised_and_keeps_it(
    fake_s3: tuple[TestHTTPServer, S3Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A temporary failure is no proof that the path cannot work: it is raised (the engine
    retries it) and the next read goes the fast way again. It used to switch the path off
    for the life of the store after ONE reset on the store's first read (issue 11)."""
    srv, store = fake_s3
    srv.put_file("/bkt/obj.bin", b"w" * 100)
    info = store.stat("obj.bin")

    def unreachable(*args: object, **kwargs: object) -> NoReturn:
        raise TransientError("cannot connect to 127.0.0.1: refused")

    with monkeypatch.context() as patch:
        patch.setattr(FastClient, "get", unreachable)
        with pytest.raises(TransientError), store.read("obj.bin", length=10, pin=info):
            pass
    assert store._fast_reads
    with store.read("obj.bin", length=10, pin=info) as body:
        assert isinstance(body, FastBody)
        assert read_all(body) == b"w" * 10
    gets = srv.requests_for("/bkt/obj.bin", "GET")
    assert len(gets) == 1 and "X-Amz-Signature=" in gets[0].query


def test_a_certificate_only_boto3_may_accept_hands_over_to_boto3(
    fake_s3: tuple[TestHTTPServer, S3Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A proven incompatibility before the path ever worked: the system's CAs reject the
    endpoint's certificate (boto3's own CA settings may not). boto3 takes this read and every
    later one."""
    srv, store = fake_s3
    srv.put_file("/bkt/obj.bin", b"w" * 100)
    info = store.stat("obj.bin")

    def rejected(*args: object, **kwargs: object) -> NoReturn:
        raise SourceError("TLS certificate of 127.0.0.1 rejected: self-signed certificate")

    monkeypatch.setattr(FastClient, "get", rejected)
    with store.read("obj.bin", length=10, pin=info) as body:
        assert read_all(body) == b"w" * 10
    assert not store._fast_reads
    gets = srv.requests_for("/bkt/obj.bin", "GET")
    assert len(gets) == 1 and "authorization" in gets[0].headers  # boto3's signed request


#: faults a presigned ranged GET can meet that say nothing about the path itself
TEMPORARY = (Fault.RESET, Fault.STATUS_503, Fault.WRONG_LENGTH, Fault.TRUNCATE, Fault.STALL)


def test_temporary_faults_on_moto_never_switch_the_fast_path_off(
    s3_srv: MotoServer, creds: None
) -> None:
    """Real parts: moto behind the fault proxy, a store whose FIRST ranged reads each meet
    one temporary fault (a reset, a 503, a wrong Content-Length, a body cut short, a stall
    past the read timeout). Each read fails with a retryable error and every one of them,
    and the good read after them, is a presigned GET: the path stays on."""
    bucket = "fast-" + uuid.uuid4().hex[:12]
    data = os.urandom(40_000)
    with fault_proxy(s3_srv.endpoint_url, flavour="s3", stall_s=3.0) as proxy:
        store = S3Store(
            "s3",
            bucket,
            endpoint_url=proxy.url,
            region=s3_srv.region,
            tuning=StoreTuning(timeout_s=0.5),
        )
        try:
            store._client.create_bucket(Bucket=bucket)
            store._client.put_object(Bucket=bucket, Key="obj.bin", Body=data)
            info = store.stat("obj.bin")
            for fault in TEMPORARY:
                proxy.force(fault, key="obj.bin", methods=["GET"], times=1)
                with (
                    pytest.raises(HaulError) as caught,
                    store.read("obj.bin", start=100, length=30_000, pin=info) as body,
                ):
                    read_all(body)  # a body cut short fails while it is read
                assert caught.value.retryable, (fault, caught.value)
                assert store._fast_reads, fault
            with store.read("obj.bin", start=100, length=30_000, pin=info) as body:
                assert isinstance(body, FastBody)
                assert read_all(body) == data[100:30_100]
        finally:
            store.close()
        gets = proxy.records("obj.bin", "GET")
    assert [r.fault for r in gets] == [*TEMPORARY, None]
    assert all("X-Amz-Signature=" in r.query for r in gets), [r.query[:40] for r in gets]


def test_once_proven_the_fast_path_reports_connection_errors(
    fake_s3: tuple[TestHTTPServer, S3Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    srv, store = fake_s3
    srv.put_file("/bkt/obj.bin", b"v" * 100)
    info = store.stat("obj.bin")
    with store.read("obj.bin", length=10, pin=info) as body:
        assert isinstance(body, FastBody)
        read_all(body)

    def reset(*args: object, **kwargs: object) -> NoReturn:
        raise TransientError("connection problem: ConnectionResetError")

    monkeypatch.setattr(FastClient, "get", reset)
    with pytest.raises(TransientError), store.read("obj.bin", length=10, pin=info):
        pass
    assert store._fast_reads  # a reset is retried by the chunk, not a reason to leave


def test_a_proxy_in_the_environment_turns_fast_reads_off(creds: None) -> None:
    from worker.settings import load_settings
    from worker.stores.plugin import StoreTuning
    from worker.stores.s3 import from_config

    env = {
        "HAUL_STORES__LAKE__TYPE": "s3",
        "HAUL_STORES__LAKE__BUCKET": "bkt",
        "HAUL_STORES__LAKE__REGION": "us-east-1",
    }
    plain = load_settings(env)
    proxied = load_settings({**env, "HTTPS_PROXY": "http://proxy.example:3128"})
    cfg = plain.stores["lake"]
    assert isinstance(cfg, S3StoreConfig)
    tuning, proxied_tuning = StoreTuning.from_settings(plain), StoreTuning.from_settings(proxied)
    assert from_config("lake", cfg, plain.store_secrets("lake"), tuning)._fast_reads
    assert not from_config("lake", cfg, proxied.store_secrets("lake"), proxied_tuning)._fast_reads
