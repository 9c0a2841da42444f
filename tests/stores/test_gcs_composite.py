"""A GCS composite object states a crc32c and no md5Hash; that crc32c is checked (contract
section 4: "GCS md5Hash or crc32c").

fake-gcs-server gives composed objects an md5Hash too, unlike GCS. :class:`CompositeGCS`
answers as GCS does (the md5Hash of a composite object dropped from its metadata); everything
else is the real store against the real server, reached through the byte-flipping proxy of
``tests.e2e_stores.proxy`` so that the bytes that arrive differ from the stated checksum.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import google_crc32c
import pytest

from tests.e2e_stores.proxy import CorruptingProxy, corrupting_proxy
from tests.support.servers import FakeGcsServer
from worker.errors import IntegrityError
from worker.stores.base import ObjectInfo
from worker.stores.gcs import GCSStore
from worker.transfer.config import TransferConfig
from worker.transfer.download import download

KiB = 1024
CFG = TransferConfig(
    chunk_size_bytes=64 * KiB,
    concurrency=2,
    multipart_threshold_bytes=128 * KiB,
    max_attempts=2,
    backoff_base_s=0.001,
    backoff_max_s=0.01,
)


class CompositeGCS(GCSStore):
    """GCS's answer for a composite object (here: the objects named ``whole-*``, which were
    composed; fake-gcs-server sets neither componentCount nor leaves md5Hash out): a crc32c
    and no md5Hash."""

    @staticmethod
    def _info(blob: Any) -> ObjectInfo:
        if str(blob.name).startswith("whole-"):
            blob.md5_hash = None
        return GCSStore._info(blob)


@pytest.fixture
def composite(gcs_srv: FakeGcsServer) -> Iterator[tuple[CompositeGCS, CorruptingProxy]]:
    """A bucket with one composite object per size, read through a corrupting proxy."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    bucket_name = f"t-{uuid.uuid4().hex[:12]}"
    client = storage.Client(
        project=gcs_srv.project,
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": gcs_srv.endpoint},
    )
    bucket = client.create_bucket(bucket_name)
    for size in (40 * KiB, 300 * KiB):  # one read whole, one in chunks
        parts = [bucket.blob(f"part-{size}-{i}") for i in range(2)]
        for part in parts:
            part.upload_from_string(os.urandom(size // 2))
        bucket.blob(f"whole-{size}").compose(parts)
    with corrupting_proxy(gcs_srv.endpoint) as proxy:
        store = CompositeGCS("gcs", bucket_name, endpoint_url=proxy.url, project=gcs_srv.project)
        try:
            yield store, proxy
        finally:
            store.close()
            client.close()


@pytest.mark.parametrize("size", [40 * KiB, 300 * KiB])
def test_a_composite_objects_crc32c_is_checked(
    composite: tuple[CompositeGCS, CorruptingProxy], tmp_path: Path, size: int
) -> None:
    """The true bytes pass the crc32c check; bytes that differ from it are an integrity
    error, retried (every attempt corrupted), and nothing is left at the destination. Before,
    a composite object was checked by its size only."""
    store, proxy = composite
    key = f"whole-{size}"
    info = store.stat(key)
    assert info.md5 is None and info.crc32c is not None
    assert info.checksum_note.startswith("crc32c")

    got = download(store, key, tmp_path / "good", CFG)
    data = (tmp_path / "good").read_bytes()
    assert got.digests.size == size == len(data)
    assert google_crc32c.value(data) == info.crc32c == got.digests.crc32c

    proxy.corrupt(key)
    with pytest.raises(IntegrityError, match="crc32c"):
        download(store, key, tmp_path / "bad", CFG)
    assert proxy.count(key) >= CFG.max_attempts
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good"]


def test_crc32c_is_only_computed_where_it_is_the_check(tmp_path: Path) -> None:
    """An object with an md5 to check does not pay for a crc32c as well."""
    from worker.transfer.download import needs_crc32c

    base = ObjectInfo(key="k", size=1, md5="0" * 32, crc32c=7)
    assert not needs_crc32c(base)
    assert needs_crc32c(dataclasses.replace(base, md5=None))
    assert not needs_crc32c(dataclasses.replace(base, md5=None, crc32c=None))
