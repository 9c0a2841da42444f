"""The one-pass triple hash equals hashlib's digests, inline and on threads."""

import hashlib
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.transfer.sink import HashWriteSink, Piece, hash_path


def _expected(data: bytes) -> tuple[str, str, str]:
    return (
        hashlib.md5(data).hexdigest(),
        hashlib.sha1(data).hexdigest(),
        hashlib.sha256(data).hexdigest(),
    )


@pytest.mark.parametrize("threads", [False, True])
@settings(max_examples=25, deadline=None)
@given(chunks=st.lists(st.binary(max_size=5000), max_size=8))
def test_sink_matches_hashlib(threads: bool, chunks: list[bytes]) -> None:
    sink = HashWriteSink(-1, threads=threads)
    offset = 0
    for i, chunk in enumerate(chunks):
        sink.feed(Piece(i, offset, memoryview(chunk), write=False))
        offset += len(chunk)
    d = sink.finish()
    data = b"".join(chunks)
    assert (d.md5, d.sha1, d.sha256) == _expected(data)
    assert d.size == len(data)


def test_buffers_come_back_only_after_all_three_stages(tmp_path: Path) -> None:
    freed: list[int] = []
    target = tmp_path / "out"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT, 0o644)
    buffers = [os.urandom(1 << 16) for _ in range(10)]
    try:
        sink = HashWriteSink(fd, threads=True, free=lambda piece: freed.append(piece.index))
        for i, buf in enumerate(buffers):
            sink.feed(Piece(i, i << 16, memoryview(buf), buf))
        d = sink.finish()
    finally:
        os.close(fd)
    assert sorted(freed) == list(range(10))
    assert (d.md5, d.sha1, d.sha256) == _expected(b"".join(buffers))
    assert target.read_bytes() == b"".join(buffers)


def test_hash_path_large_and_empty(tmp_path: Path) -> None:
    big = tmp_path / "big"
    data = os.urandom(40 * 1024 * 1024 + 17)
    big.write_bytes(data)
    d = hash_path(big)
    assert (d.md5, d.sha1, d.sha256, d.size) == (*_expected(data), len(data))
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert hash_path(empty).sha256 == hashlib.sha256(b"").hexdigest()
