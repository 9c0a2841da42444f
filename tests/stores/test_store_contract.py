"""The store contract: every backend behaves the same against its real local server.

Parametrized over ``local``, ``s3`` (moto), ``azure`` (azurite), ``gcs`` (fake-gcs-server) and
``swift`` (one-node SAIO). Where a server lacks a feature the case is skipped with the reason;
see ``EMULATOR_GAPS`` below.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.stores.conftest import Harness, MiB
from worker.errors import AccessDenied, AlreadyExists, Changed, IntegrityError, NotFound, StoreError
from worker.stores.base import ObjectInfo, Store

pytestmark = pytest.mark.stores

#: stores whose server states an md5 of the content for single-part objects
STATES_MD5 = {"s3", "azure", "gcs", "swift"}
#: stores whose conditional create has exactly one winner under concurrency
ATOMIC_CREATE = {"local", "s3", "azure", "gcs"}
EMULATOR_GAPS = {
    "swift": "Swift's If-None-Match: * is not atomic under concurrent PUTs (eventually "
    "consistent, real Swift too): several racing writers can win",
    "gcs-credentials": "fake-gcs-server accepts every request anonymously: wrong credentials "
    "cannot be rejected",
    "s3-md5": "moto accepts a wrong Content-MD5 (AWS answers BadDigest)",
    "gcs-md5": "fake-gcs-server accepts a wrong md5Hash (GCS answers 400)",
}

MakeFile = Callable[[bytes], Path]


def _data(size: int, seed: int = 0) -> bytes:
    block = hashlib.sha256(f"haul-{seed}".encode()).digest() * 2048  # 64 KiB
    return (block * (size // len(block) + 1))[:size]


def _read(store: Store, key: str, **kw: Any) -> bytes:
    out = bytearray()
    buf = memoryview(bytearray(256 * 1024))
    with store.read(key, **kw) as stream:
        while n := stream.readinto(buf):
            out += buf[:n]
    return bytes(out)


def _create(store: Store, key: str, data: bytes, make_file: MakeFile) -> None:
    store.create(key, make_file(data), size=len(data), md5=hashlib.md5(data).hexdigest())


def test_stat_reports_size_version_and_md5(harness: Harness, make_file: MakeFile) -> None:
    """stat gives the size, a version token, and the md5 where the server states one."""
    data = _data(3000)
    _create(harness.store, "a/obj.bin", data, make_file)
    info = harness.store.stat("a/obj.bin")
    assert info.key == "a/obj.bin"
    assert info.size == len(data)
    assert info.version
    if harness.kind in STATES_MD5:
        assert info.md5 == hashlib.md5(data).hexdigest(), info.checksum_note
        assert info.checksum_note.startswith("md5")
    else:
        assert info.md5 is None
        assert info.checksum_note.startswith("none")


def test_list_prefix_pages_and_order(harness: Harness, make_file: MakeFile) -> None:
    """list(prefix) returns every object under the prefix, in key order, across many pages."""
    store = harness.make(page_size=4)
    keys = [f"p/{i:02d}.txt" for i in range(13)] + ["p/a b.txt", "p/sub/deep.txt", "p/é.txt"]
    for i, key in enumerate(keys):
        _create(store, key, f"data-{i}".encode(), make_file)
    for key in ("q/outside.txt", "pp.txt"):
        _create(store, key, b"x", make_file)
    listed = list(store.list("p/"))
    assert [o.key for o in listed] == sorted(keys)
    sizes = {o.key: o.size for o in listed}
    assert sizes == {k: len(f"data-{i}".encode()) for i, k in enumerate(keys)}
    assert [o.key for o in store.list("p/sub/")] == ["p/sub/deep.txt"]
    assert list(store.list("nothing/")) == []


def test_ranged_reads(harness: Harness, make_file: MakeFile) -> None:
    """start/length ranges, the tail to the end, a range clipped at the end, an empty range."""
    data = _data(100_000, seed=1)
    _create(harness.store, "r.bin", data, make_file)
    pin = harness.store.stat("r.bin")
    assert _read(harness.store, "r.bin", pin=pin) == data
    assert _read(harness.store, "r.bin", start=0, length=10, pin=pin) == data[:10]
    assert _read(harness.store, "r.bin", start=500, length=1234, pin=pin) == data[500:1734]
    assert _read(harness.store, "r.bin", start=99_990, pin=pin) == data[99_990:]
    assert _read(harness.store, "r.bin", start=99_990, length=100, pin=pin) == data[99_990:]
    assert _read(harness.store, "r.bin", start=100, length=0, pin=pin) == b""
    assert _read(harness.store, "r.bin", start=7) == data[7:]  # unpinned: stats first


def test_pinned_read_after_replace_raises_changed(harness: Harness, make_file: MakeFile) -> None:
    """A read pinned to the first version fails with Changed once the object is replaced.

    GCS pins with the generation (a 404 of the old generation in an unversioned bucket);
    fake-gcs-server ignores if_generation_match on reads, so the generation form is the one
    that works on the emulator and on GCS alike.
    """
    store = harness.store
    _create(store, "c.bin", _data(5000, seed=2), make_file)
    pin = store.stat("c.bin")
    store.put_record("c.bin", _data(5000, seed=3))  # same size, other bytes
    with pytest.raises(Changed):
        _read(store, "c.bin", start=10, length=100, pin=pin)
    assert _read(store, "c.bin") == _data(5000, seed=3)


#: stores whose server answers 404, not 412, to a pinned read of an object being overwritten:
#: the read raises Changed so that the object starts over (swift.py and gcs.py say why)
GONE_IS_CHANGED = {"gcs", "swift"}


def test_an_object_removed_after_its_stat_ends_not_found(
    harness: Harness, make_file: MakeFile, tmp_path: Path
) -> None:
    """A pinned read of an object removed since its stat raises NotFound or Changed (always
    Changed where a 404 can be an overwrite landing); either way a download of it
    ends in NotFound (after one fresh stat) and leaves no file behind."""
    from worker.transfer.config import TransferConfig
    from worker.transfer.download import download

    store = harness.store
    _create(store, "gone.bin", _data(300_000, seed=5), make_file)
    pin = store.stat("gone.bin")
    assert store.delete("gone.bin")
    # Elsewhere the answer is the server's: 404 (S3), or 412 for a failed If-Match (Azurite)
    want = Changed if harness.kind in GONE_IS_CHANGED else (Changed, NotFound)
    with pytest.raises(want):
        _read(store, "gone.bin", start=10, length=100, pin=pin)
    cfg = TransferConfig(chunk_size_bytes=64 * 1024, concurrency=2, max_attempts=3,
                         multipart_threshold_bytes=128 * 1024, backoff_base_s=0.001)  # fmt: skip
    dest = tmp_path / "out" / "gone.bin"
    with pytest.raises(NotFound):
        download(store, "gone.bin", dest, cfg, info=pin)
    assert not dest.parent.exists() or list(dest.parent.iterdir()) == []


def test_create_new_key(harness: Harness, make_file: MakeFile) -> None:
    """create stores exactly the file's bytes under a new key."""
    data = _data(70_000, seed=4)
    _create(harness.store, "data/proj/ab/abcd/file.bin", data, make_file)
    assert _read(harness.store, "data/proj/ab/abcd/file.bin") == data


def test_create_empty_object(harness: Harness, make_file: MakeFile) -> None:
    """A zero-byte object can be created, stated and read."""
    _create(harness.store, "empty", b"", make_file)
    assert harness.store.stat("empty").size == 0
    assert _read(harness.store, "empty") == b""


def test_create_existing_key_raises_already_exists(harness: Harness, make_file: MakeFile) -> None:
    """A second create of a key raises AlreadyExists and leaves the first content."""
    first, second = _data(2000, seed=5), _data(2000, seed=6)
    _create(harness.store, "dup.bin", first, make_file)
    with pytest.raises(AlreadyExists):
        _create(harness.store, "dup.bin", second, make_file)
    assert _read(harness.store, "dup.bin") == first


def test_create_race_has_exactly_one_winner(harness: Harness, make_file: MakeFile) -> None:
    """Eight writers create one key at once: one wins, seven get AlreadyExists."""
    if harness.kind not in ATOMIC_CREATE:
        pytest.skip(EMULATOR_GAPS[harness.kind])
    writers = 8
    stores = [harness.make() for _ in range(writers)]
    files = [make_file(_data(4000, seed=100 + i)) for i in range(writers)]
    barrier = threading.Barrier(writers)
    results: list[str] = [""] * writers

    def write(i: int) -> None:
        barrier.wait()
        try:
            stores[i].create("race.bin", files[i], size=4000)
            results[i] = "won"
        except AlreadyExists:
            results[i] = "lost"

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["lost"] * (writers - 1) + ["won"]
    winner = results.index("won")
    assert _read(harness.store, "race.bin") == files[winner].read_bytes()


def test_large_create_uses_parts_and_reads_back(harness: Harness, make_file: MakeFile) -> None:
    """Above the threshold the upload goes in parts (multipart/blocks/resumable/SLO).

    The bytes read back are right; the md5 is stated where the upload set it (Azure
    Content-MD5, GCS md5Hash) and absent, with a reason, for S3 multipart and Swift SLO.
    """
    data = _data(11 * MiB, seed=7)
    md5 = hashlib.md5(data).hexdigest()
    _create(harness.store, "big/file.bin", data, make_file)
    info = harness.store.stat("big/file.bin")
    assert info.size == len(data)
    got = _read(harness.store, "big/file.bin", pin=info)
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest()
    assert (
        _read(harness.store, "big/file.bin", start=5 * MiB - 3, length=6, pin=info)
        == (data[5 * MiB - 3 : 5 * MiB + 3])
    )
    if harness.kind in {"s3", "swift"}:
        assert info.md5 is None
        assert info.checksum_note.startswith("none:")
    elif harness.kind in {"azure", "gcs"}:
        assert info.md5 == md5


def test_large_create_of_existing_key_raises_already_exists(
    harness: Harness, make_file: MakeFile
) -> None:
    """The multipart path never overwrites either."""
    store = harness.make(multipart_threshold_bytes=1 * MiB)
    first = _data(2 * MiB, seed=8)
    _create(store, "big2.bin", first, make_file)
    with pytest.raises(AlreadyExists):
        _create(store, "big2.bin", _data(2 * MiB, seed=9), make_file)
    assert _read(store, "big2.bin") == first


def test_large_create_racing_the_key_at_commit_never_overwrites(
    harness: Harness, make_file: MakeFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key appears after the existence check and before the parts are committed: the
    commit itself is conditional (S3 CompleteMultipartUpload If-None-Match: *, Azure Put
    Block List If-None-Match: *, GCS resumable ifGenerationMatch=0, Swift manifest PUT
    If-None-Match: *), so it is AlreadyExists and the bytes there stay; no part is left behind
    (S3: no open multipart upload; Swift: only the live object's segments)."""
    store = harness.make(multipart_threshold_bytes=1 * MiB)
    first = _data(2 * MiB, seed=11)
    _create(store, "late.bin", first, make_file)
    monkeypatch.setattr(store, "_exists", lambda key: False, raising=False)  # the check missed it
    with pytest.raises(AlreadyExists):
        _create(store, "late.bin", _data(2 * MiB, seed=12), make_file)
    assert _read(store, "late.bin") == first
    if harness.kind == "s3":
        s3 = store._client  # type: ignore[attr-defined]
        assert not s3.list_multipart_uploads(Bucket=store.bucket).get("Uploads")  # type: ignore[attr-defined]
    if harness.kind == "swift":
        _, segments = store._conn().get_container(store.segment_container)  # type: ignore[attr-defined]
        assert len(segments) == 1  # the first upload's one segment


def test_delete_true_then_false(harness: Harness, make_file: MakeFile) -> None:
    """delete says True when it removed the object, False when there was none."""
    _create(harness.store, "d/x.bin", b"bye", make_file)
    assert harness.store.delete("d/x.bin") is True
    assert harness.store.delete("d/x.bin") is False
    with pytest.raises(NotFound):
        harness.store.stat("d/x.bin")


def test_delete_of_large_object(harness: Harness, make_file: MakeFile) -> None:
    """A multipart/SLO object deletes like any other (Swift: its segments go with it)."""
    store = harness.make(multipart_threshold_bytes=1 * MiB)
    _create(store, "big3.bin", _data(2 * MiB, seed=10), make_file)
    assert store.delete("big3.bin") is True
    assert store.delete("big3.bin") is False


def test_records_round_trip_and_overwrite(harness: Harness) -> None:
    """put_record/get_record round-trip, and a second put_record replaces the first."""
    store = harness.store
    store.put_record("datums/d1.json", b'{"v": 1}')
    assert store.get_record("datums/d1.json") == b'{"v": 1}'
    store.put_record("datums/d1.json", b'{"v": 2, "purged": true}')
    assert store.get_record("datums/d1.json") == b'{"v": 2, "purged": true}'


def test_missing_key_is_not_found(harness: Harness) -> None:
    """stat, read, get_record of a missing key raise NotFound."""
    store = harness.store
    with pytest.raises(NotFound):
        store.stat("no/such/key")
    with pytest.raises(NotFound):
        _read(store, "no/such/key")
    with pytest.raises(NotFound):
        store.get_record("no/such/record.json")


def test_missing_bucket_is_not_found(harness: Harness, make_file: MakeFile) -> None:
    """A bucket/container that does not exist gives NotFound, for stat and for create."""
    store = harness.missing_bucket()
    with pytest.raises(NotFound):
        store.stat("k")
    if harness.kind != "local":  # a local store creates its folders on demand
        with pytest.raises(NotFound):
            _create(store, "k", b"x", make_file)
        with pytest.raises(NotFound):
            list(store.list(""))


def test_credentials_never_in_errors(harness: Harness) -> None:
    """Errors raised with wrong credentials never carry them (str or repr)."""
    if harness.kind == "local":
        pytest.skip("a local store has no credentials")
    if harness.wrong_credentials is None:
        pytest.skip(EMULATOR_GAPS["gcs-credentials"])
    store, secrets = harness.wrong_credentials()
    with pytest.raises(StoreError) as info:
        store.stat("some/key")
    if harness.kind in {"azure", "swift"}:
        assert isinstance(info.value, AccessDenied)
    text = f"{info.value} {info.value!r} {info.value.args!r}"
    for secret in secrets:
        assert secret not in text
    assert info.value.__cause__ is None or all(s not in str(info.value.__cause__) for s in secrets)


def test_wrong_md5_on_create_is_rejected(harness: Harness, make_file: MakeFile) -> None:
    """A create whose md5 does not match the bytes is refused where the server checks it."""
    if harness.kind == "local":
        pytest.skip("a local store does not check md5 (it copies the hashed file)")
    if harness.kind in {"s3", "gcs"}:
        pytest.skip(EMULATOR_GAPS[f"{harness.kind}-md5"])
    data = b"the real bytes"
    wrong = hashlib.md5(b"other bytes").hexdigest()
    with pytest.raises(IntegrityError):
        harness.store.create("bad.bin", make_file(data), size=len(data), md5=wrong)
    with pytest.raises(NotFound):
        harness.store.stat("bad.bin")


def test_uri_has_no_credentials(harness: Harness) -> None:
    """uri() names the object in the contract's URL form."""
    uri = harness.store.uri("a/b.txt")
    prefix = {"local": "file://", "s3": "s3://", "azure": "azure://", "gcs": "gs://",
              "swift": "swift://"}[harness.kind]  # fmt: skip
    assert uri.startswith(prefix)
    assert uri.endswith("a/b.txt")
    assert "@" not in uri and "?" not in uri


def _size(info: ObjectInfo) -> int:
    return info.size


def test_info_is_hashable_shape(harness: Harness, make_file: MakeFile) -> None:
    """ObjectInfo from list() and stat() agree on key and size."""
    _create(harness.store, "s/one.bin", b"12345", make_file)
    listed = list(harness.store.list("s/"))
    assert [(o.key, _size(o)) for o in listed] == [("s/one.bin", 5)]
    assert harness.store.stat("s/one.bin").size == 5
    assert os.fspath("s/one.bin") == listed[0].key


def test_other_calls_during_a_read_do_not_truncate_it(
    harness: Harness, make_file: MakeFile
) -> None:
    """Writes and stats on the same thread while a body streams leave the body whole.

    python-swiftclient ends a body early without an error when its one HTTP connection is
    reused mid-read; the Swift store gives a streaming read its own Connection.
    """
    data = _data(3 * MiB, seed=11)
    _create(harness.store, "stream.bin", data, make_file)
    out = bytearray()
    buf = memoryview(bytearray(256 * 1024))
    with harness.store.read("stream.bin") as stream:
        n = stream.readinto(buf)
        out += buf[:n]
        harness.store.put_record("side.json", b"{}")
        harness.store.stat("side.json")
        assert _read(harness.store, "side.json") == b"{}"
        while n := stream.readinto(buf):
            out += buf[:n]
    assert bytes(out) == data


def test_s3_versioned_bucket_pins_version_and_deletes_all(
    harness: Harness, make_file: MakeFile
) -> None:
    """S3 with versioning: reads pin the VersionId (old bytes stay readable) and delete removes
    every version and delete marker of the key."""
    if harness.kind != "s3":
        pytest.skip("S3-only case: versioned buckets and a purge that removes every version")
    import boto3

    srv: Any = harness.server
    bucket: str = harness.store.bucket
    client = boto3.client("s3", endpoint_url=srv.endpoint_url, region_name=srv.region)
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    store = harness.make()  # a fresh store learns the bucket is versioned
    _create(store, "v.bin", b"one", make_file)
    pin = store.stat("v.bin")
    assert pin.extra.get("version_id")
    store.put_record("v.bin", b"two")
    assert _read(store, "v.bin", pin=pin) == b"one"  # the pinned version is still there
    assert _read(store, "v.bin") == b"two"
    client.delete_object(Bucket=bucket, Key="v.bin")  # leaves a delete marker
    client.put_object(Bucket=bucket, Key="v.bin", Body=b"three")
    client.put_object(Bucket=bucket, Key="v.bin.other", Body=b"keep")
    assert store.delete("v.bin") is True
    versions = client.list_object_versions(Bucket=bucket, Prefix="v.bin")
    left = [v["Key"] for v in versions.get("Versions", []) + versions.get("DeleteMarkers", [])]
    assert left == ["v.bin.other"]
    assert store.delete("v.bin") is False


def test_from_config_builds_the_store(harness: Harness, make_file: MakeFile) -> None:
    """The registry builds each backend from settings and secrets alone."""
    from worker.settings import Settings, StoreSecrets
    from worker.stores.registry import build_store

    store: Any = harness.store
    srv: Any = harness.server
    secrets: dict[str, str] = {}
    cfg: dict[str, object]
    if harness.kind == "local":
        cfg = {"type": "local", "path": str(store.root)}
    elif harness.kind == "s3":  # credentials: the AWS_* variables the harness set
        cfg = {"type": "s3", "bucket": store.bucket, "endpoint_url": srv.endpoint_url,
               "region": srv.region}  # fmt: skip
    elif harness.kind == "azure":
        cfg = {"type": "azure", "container": store.container}
        secrets = {"connection_string": srv.connection_string}
    elif harness.kind == "gcs":
        cfg = {"type": "gcs", "bucket": store.bucket_name, "endpoint_url": srv.endpoint}
    else:
        cfg = {"type": "swift", "auth_url": srv.auth_url, "project": srv.project,
               "container": store.container}  # fmt: skip
        secrets = {"user": srv.user, "key": srv.key}
    settings = Settings.model_validate({"stores": {"cfg": cfg}, "default_store": "cfg"})
    settings = settings.model_copy(
        update={"secrets": {"cfg": StoreSecrets.model_validate({"values": secrets})}}
    )
    built = build_store("cfg", settings.stores["cfg"], settings.store_secrets("cfg"), settings)
    _create(built, "from-config.txt", b"hello", make_file)
    assert _read(store, "from-config.txt") == b"hello"
    assert [o.key for o in built.list("from-config")] == ["from-config.txt"]
    built.close()


# -- the shared helpers: byte counting and the retry budget ----------------------------------


def test_counted_stream_raises_on_a_short_body() -> None:
    """A body that ends early (swiftclient's silent truncation) is an IntegrityError."""
    from contextlib import nullcontext

    from worker.stores._stream import CountedStream

    stream = CountedStream(iter([b"abc", b"de"]), expected=10, what="x", guard=nullcontext)
    buf = memoryview(bytearray(4))
    assert stream.readinto(buf) == 3
    assert stream.readinto(buf) == 2
    with pytest.raises(IntegrityError, match="5 of 10"):
        stream.readinto(buf)
    long = CountedStream(iter([b"abcdef"]), expected=4, what="x", guard=nullcontext)
    with pytest.raises(IntegrityError):
        long.readinto(buf)


def test_a_store_makes_one_attempt_and_passes_retry_after_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store answering 503 costs exactly one request per call (the engine's policy owns the
    retries), and the server's ``Retry-After`` travels up on the TransientError."""
    from tests.support.httpserver import serve
    from worker.errors import TransientError
    from worker.stores.s3 import S3Store

    for var, value in {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}.items():
        monkeypatch.setenv(var, value)
    with serve(tmp_path) as srv:
        store = S3Store("s3", "bkt", endpoint_url=srv.base_url, region="us-east-1")
        srv.faults.fail_next("*", n=100, status=503, headers={"Retry-After": "7"})
        with pytest.raises(TransientError) as caught:
            store.stat("some/key")
        assert caught.value.retry_after_s == 7.0
        assert len(srv.requests) == 1
        srv.faults.clear()
        srv.faults.fail_next("*", n=100, status=500)
        with pytest.raises(TransientError) as caught:
            store.stat("some/key")
        assert caught.value.retry_after_s is None
        assert len(srv.requests) == 2
        store.close()
