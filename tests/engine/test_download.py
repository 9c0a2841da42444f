"""The chunked download engine against a real HTTP server with injected faults."""

from __future__ import annotations

import ssl
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.engine.conftest import SMALL_CFG, digests_of, leftovers
from tests.support.httpserver import RequestRecord, TestHTTPServer
from worker.errors import IntegrityError, NotFound
from worker.stores.http import HttpSource
from worker.transfer import chunked
from worker.transfer.download import download

CHUNK = SMALL_CFG.chunk_size_bytes


def wait_until(check: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        threading.Event().wait(0.005)


def ranged_gets(server: TestHTTPServer, path: str) -> list[RequestRecord]:
    return [r for r in server.requests_for(path, "GET") if r.range and r.range != "bytes=0-0"]


def test_chunked_download_hashes_and_pins_every_range(
    server: TestHTTPServer, http: HttpSource, blob: bytes, tmp_path: Path
) -> None:
    """Every byte arrives, all three hashes match, and every later range carries If-Match."""
    server.put_file("/data.bin", blob)
    dest = tmp_path / "out" / "data.bin"
    got = download(http, server.url("/data.bin"), dest, SMALL_CFG)
    assert dest.read_bytes() == blob
    assert got.digests == digests_of(blob)
    gets = ranged_gets(server, "/data.bin")
    assert len(gets) == 10
    assert all(r.if_match == got.info.etag for r in gets if r.range_start != 0)
    assert leftovers(dest.parent) == []


def test_small_file_is_one_request(
    server: TestHTTPServer, http: HttpSource, tmp_path: Path
) -> None:
    """Below the threshold a file costs one GET (its first range tells size and ETag)."""
    server.put_file("/s.txt", b"hello")
    got = download(http, server.url("/s.txt"), tmp_path / "s.txt", SMALL_CFG)
    assert got.digests == digests_of(b"hello")
    assert len(server.requests_for("/s.txt")) == 1


def test_empty_file(server: TestHTTPServer, http: HttpSource, tmp_path: Path) -> None:
    server.put_file("/empty", b"")
    got = download(http, server.url("/empty"), tmp_path / "empty", SMALL_CFG)
    assert got.digests == digests_of(b"")
    assert (tmp_path / "empty").read_bytes() == b""


def test_out_of_order_chunks_hash_in_order_with_bounded_buffers(
    server: TestHTTPServer,
    http: HttpSource,
    blob: bytes,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Chunk 1 is held back until later chunks are done and the pool is exhausted.

    (Chunk 0 comes with the first request, which also tells the size and ETag.) Fetchers then
    wait for buffers, no request beyond the pool goes out, and once chunk 1 arrives everything
    is hashed in file order: the digests equal those of the file.
    """
    pools: list[chunked.BufferPool] = []

    class Recorded(chunked.BufferPool):
        def __init__(self, count: int, size: int) -> None:
            super().__init__(count, size)
            pools.append(self)

    monkeypatch.setattr(chunked, "BufferPool", Recorded)
    server.put_file("/data.bin", blob)
    release = threading.Event()

    def hold_chunk1(rec: RequestRecord) -> None:
        if rec.range_start == CHUNK:
            release.wait(30)

    server.faults.on_request(hold_chunk1, "/data.bin")
    result: list[object] = []
    worker = threading.Thread(
        target=lambda: result.append(
            download(http, server.url("/data.bin"), tmp_path / "d.bin", SMALL_CFG)
        )
    )
    worker.start()
    try:

        def stalled() -> bool:
            # A fetcher waits for a buffer, and every request the pool allows has arrived.
            starts = {r.range_start for r in ranged_gets(server, "/data.bin")}
            return bool(pools) and pools[0].waiting > 0 and len(starts) >= pools[0].count + 1

        wait_until(stalled)
        pool = pools[0]
        # All buffers are out (chunk 1 in flight, the next ones finished); nobody fetches more.
        assert pool.peak_out == pool.count == SMALL_CFG.concurrency + 2
        started = {r.range_start for r in ranged_gets(server, "/data.bin")}
        assert started == {i * CHUNK for i in range(pool.count + 1)}
    finally:
        release.set()
        worker.join(30)
    assert result, "download did not finish"
    assert (tmp_path / "d.bin").read_bytes() == blob
    assert result[0].digests == digests_of(blob)  # type: ignore[attr-defined]
    assert pools[0].peak_out <= pools[0].count


def test_reset_costs_one_chunk_only(
    server: TestHTTPServer, http: HttpSource, blob: bytes, tmp_path: Path
) -> None:
    """A connection reset in the middle of one range re-fetches that range alone."""
    server.put_file("/data.bin", blob)
    server.faults.reset_connection("/data.bin", nth=4, after_bytes=1000)
    got = download(http, server.url("/data.bin"), tmp_path / "d.bin", SMALL_CFG)
    assert got.digests == digests_of(blob)
    counts = Counter(r.range_start for r in ranged_gets(server, "/data.bin"))
    assert sorted(counts.values()) == [1] * 9 + [2]


def test_server_error_on_one_chunk_is_retried(
    server: TestHTTPServer, http: HttpSource, blob: bytes, tmp_path: Path
) -> None:
    server.put_file("/data.bin", blob)
    server.faults.fail_next("/data.bin", n=2, status=503)
    got = download(http, server.url("/data.bin"), tmp_path / "d.bin", SMALL_CFG)
    assert got.digests == digests_of(blob)


def test_object_replaced_mid_download_restarts_never_mixes(
    server: TestHTTPServer, http: HttpSource, blob: bytes, tmp_path: Path
) -> None:
    """After the 3rd range the file changes: pinned reads get 412 and the object restarts."""
    server.put_file("/data.bin", blob)
    new = bytes(reversed(blob)) + b"longer"
    server.faults.replace_after_first_read("/data.bin", new, after=3)
    dest = tmp_path / "d.bin"
    got = download(http, server.url("/data.bin"), dest, SMALL_CFG)
    assert dest.read_bytes() == new
    assert got.digests == digests_of(new)
    assert any(r.status == 412 for r in server.requests_for("/data.bin"))
    assert leftovers(tmp_path) == []


def test_truncated_body_is_retried(
    server: TestHTTPServer, http: HttpSource, blob: bytes, tmp_path: Path
) -> None:
    server.put_file("/data.bin", blob)
    server.faults.truncate("/data.bin", after_bytes=100, times=1)
    got = download(http, server.url("/data.bin"), tmp_path / "d.bin", SMALL_CFG)
    assert got.digests == digests_of(blob)


def test_truncated_every_time_fails_and_leaves_nothing(
    server: TestHTTPServer, http: HttpSource, blob: bytes, tmp_path: Path
) -> None:
    """When every body is short, the bounded budget runs out: IntegrityError, no part files."""
    server.put_file("/data.bin", blob)
    server.faults.truncate("/data.bin", after_bytes=100, times=None)
    with pytest.raises(IntegrityError):
        download(http, server.url("/data.bin"), tmp_path / "d.bin", SMALL_CFG)
    assert not (tmp_path / "d.bin").exists()
    assert leftovers(tmp_path) == []
    # Bounded: at most max_attempts per chunk in flight, never an endless loop.
    assert len(server.requests_for("/data.bin")) <= SMALL_CFG.max_attempts * (
        SMALL_CFG.concurrency + 2
    )


def test_small_truncated_body_retried_then_fails(
    server: TestHTTPServer, http: HttpSource, tmp_path: Path
) -> None:
    data = b"x" * 5000
    server.put_file("/s.bin", data)
    server.faults.truncate("/s.bin", after_bytes=10, times=1)
    assert download(http, server.url("/s.bin"), tmp_path / "s", SMALL_CFG).digests == digests_of(
        data
    )
    server.faults.truncate("/s.bin", after_bytes=10, times=None)
    with pytest.raises(IntegrityError):
        download(http, server.url("/s.bin"), tmp_path / "s2", SMALL_CFG)
    assert leftovers(tmp_path) == []


def test_not_found_leaves_nothing(server: TestHTTPServer, http: HttpSource, tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        download(http, server.url("/missing"), tmp_path / "m", SMALL_CFG)
    assert leftovers(tmp_path) == []


def test_server_without_ranges_streams_whole_body(
    server: TestHTTPServer, http: HttpSource, blob: bytes, tmp_path: Path
) -> None:
    server.put_file("/data.bin", blob)
    server.faults.ignore_range("/data.bin")
    got = download(http, server.url("/data.bin"), tmp_path / "d.bin", SMALL_CFG)
    assert got.digests == digests_of(blob)
    assert (tmp_path / "d.bin").read_bytes() == blob


def test_progress_is_reported_at_a_bounded_rate(
    server: TestHTTPServer, http: HttpSource, blob: bytes, tmp_path: Path
) -> None:
    server.put_file("/data.bin", blob)
    seen: list[object] = []
    cfg = type(SMALL_CFG)(**{**SMALL_CFG.__dict__, "progress_interval_s": 1e-9})
    download(http, server.url("/data.bin"), tmp_path / "d.bin", cfg, progress=seen.append)
    assert seen
    last = seen[-1]
    assert last.final and last.bytes_done == len(blob)  # type: ignore[attr-defined]


def test_https_fast_path_verifies_the_certificate(www: Path, tmp_path: Path) -> None:
    """The http.client path keeps TLS verification (with SNI and the hostname check)."""
    from tests.support.httpserver import serve
    from worker.errors import SourceError

    data = b"secret bytes" * 1000
    with serve(www, tls=True) as srv:
        srv.put_file("/t.bin", data)
        ctx = ssl.create_default_context(cafile=str(srv.cafile))
        with HttpSource(allow_private=True, verify=ctx) as trusted:
            got = download(trusted, srv.url("/t.bin"), tmp_path / "t.bin", SMALL_CFG)
        assert got.digests == digests_of(data)
        with HttpSource(allow_private=True) as default, pytest.raises(SourceError):
            download(default, srv.url("/t.bin"), tmp_path / "u.bin", SMALL_CFG)
    assert leftovers(tmp_path) == []
