"""The one-pass triple hash equals hashlib's digests, inline and threaded."""

import hashlib
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.hashing import TripleHasher, hash_file


def _expected(data: bytes) -> tuple[str, str, str]:
    return (
        hashlib.md5(data).hexdigest(),
        hashlib.sha1(data).hexdigest(),
        hashlib.sha256(data).hexdigest(),
    )


@pytest.mark.parametrize("threads", [False, True])
@settings(max_examples=25, deadline=None)
@given(chunks=st.lists(st.binary(max_size=5000), max_size=8))
def test_triple_hasher_matches_hashlib(threads: bool, chunks: list[bytes]) -> None:
    hasher = TripleHasher(threads=threads)
    for chunk in chunks:
        hasher.update(chunk)
    d = hasher.digests()
    data = b"".join(chunks)
    assert (d.md5, d.sha1, d.sha256) == _expected(data)
    assert d.size == len(data)


def test_threaded_release_callback_runs_after_all_three_hashes() -> None:
    released: list[int] = []
    hasher = TripleHasher(threads=True, depth=2)
    buffers = [os.urandom(1 << 16) for _ in range(10)]
    for i, buf in enumerate(buffers):
        hasher.update(buf, release=lambda i=i: released.append(i))
    d = hasher.digests()
    assert sorted(released) == list(range(10))
    assert (d.md5, d.sha1, d.sha256) == _expected(b"".join(buffers))


def test_hash_file_large_and_empty(tmp_path: Path) -> None:
    big = tmp_path / "big"
    data = os.urandom(40 * 1024 * 1024 + 17)
    big.write_bytes(data)
    d = hash_file(big)
    assert (d.md5, d.sha1, d.sha256, d.size) == (*_expected(data), len(data))
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert hash_file(empty).sha256 == hashlib.sha256(b"").hexdigest()
