"""Cached small items on the lane: one conditional request each, 304 copied, changes fetched."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.engine.conftest import SMALL_CFG, digests_of, leftovers
from tests.engine.test_small_lane import LANE_RANGE, items_for, put_many
from tests.support.httpserver import TestHTTPServer, serve
from tests.support.servers import RedisServer
from worker.models import PrepareInputs
from worker.pipeline.jobs import PREPARE_INPUTS
from worker.pipeline.protocol import execute
from worker.pipeline.runtime import Runtime
from worker.settings import load_settings
from worker.stores.base import ObjectInfo
from worker.stores.http import HttpSource
from worker.transfer.batch import BatchResult, download_many
from worker.transfer.cache import Cache, CacheBatch, CachedEntry
from worker.transfer.download import source_id


def _name(path: str) -> str:
    return path.rsplit("/", 1)[1]


def _fetch(
    http: HttpSource, server: TestHTTPServer, files: dict[str, bytes], to: Path, cache: Cache
) -> list[BatchResult]:
    server.reset()
    return download_many(items_for(http, server, list(files), to), SMALL_CFG, cache=cache)


@pytest.fixture
def cache(tmp_path: Path) -> Cache:
    return Cache(tmp_path / "cache", max_bytes=10**7)


def test_warm_items_cost_exactly_one_conditional_request_each(
    server: TestHTTPServer, http: HttpSource, cache: Cache, tmp_path: Path
) -> None:
    """A warm run sends one If-None-Match lane request per item (its cached ETag), gets 304s,
    and copies every file from the cache with the recorded hashes and ``cached`` set."""
    files = put_many(server, 30)
    cold = _fetch(http, server, files, tmp_path / "a", cache)
    assert all(r.downloaded is not None and not r.downloaded.cached for r in cold)
    assert len(server.requests) == len(files)
    assert not any(r.is_conditional for r in server.requests)

    warm = _fetch(http, server, files, tmp_path / "b", cache)
    assert len(server.requests) == len(files)
    for path in files:
        (req,) = server.requests_for(path)
        assert req.range == LANE_RANGE and req.status == 304
        assert req.if_none_match is not None and req.if_none_match.startswith('"')
    assert server.bytes_sent == 0
    for (path, data), result in zip(files.items(), warm, strict=True):
        assert result.downloaded is not None, result.error
        assert result.downloaded.cached
        assert result.downloaded.digests == digests_of(data)
        assert result.downloaded.info.size == len(data)
        assert result.downloaded.info.etag == server.requests_for(path)[0].if_none_match
        dest = tmp_path / "b" / _name(path)
        assert dest.read_bytes() == data
        assert dest.stat().st_ino != (tmp_path / "a" / _name(path)).stat().st_ino
    assert leftovers(tmp_path / "b") == []


def test_a_changed_item_brings_its_new_body_in_the_same_answer(
    server: TestHTTPServer, http: HttpSource, cache: Cache, tmp_path: Path
) -> None:
    """A cached item that changed is answered with its new bytes by the conditional request
    itself (no second request), is not ``cached``, and replaces the cache entry."""
    files = put_many(server, 10)
    _fetch(http, server, files, tmp_path / "a", cache)
    changed = list(files)[2:5]
    for path in changed:
        files[path] = os.urandom(700)
        server.put_file(path, files[path])

    again = _fetch(http, server, files, tmp_path / "b", cache)
    assert len(server.requests) == len(files)
    for (path, data), result in zip(files.items(), again, strict=True):
        (req,) = server.requests_for(path)
        assert req.if_none_match is not None
        assert req.status == (206 if path in changed else 304)
        assert result.downloaded is not None
        assert result.downloaded.cached is (path not in changed)
        assert result.downloaded.digests == digests_of(data)
        assert (tmp_path / "b" / _name(path)).read_bytes() == data

    third = _fetch(http, server, files, tmp_path / "c", cache)
    assert {r.status for r in server.requests} == {304}  # the new versions were kept
    assert all(r.downloaded is not None and r.downloaded.cached for r in third)
    for path, data in files.items():
        assert (tmp_path / "c" / _name(path)).read_bytes() == data


def test_a_confirmed_but_tampered_entry_is_fetched_for_real(
    server: TestHTTPServer, http: HttpSource, cache: Cache, tmp_path: Path
) -> None:
    """A 304 does not make a cache entry trustworthy: one whose data file was rewritten is
    dropped and the object is downloaded the ordinary way (stat, then the body)."""
    files = put_many(server, 3)
    _fetch(http, server, files, tmp_path / "a", cache)
    victim = list(files)[1]
    entry = cache.peek(source_id(http, server.url(victim)))
    assert entry is not None
    entry.data.write_bytes(b"x" * len(files[victim]))  # same size, other inode state

    again = _fetch(http, server, files, tmp_path / "b", cache)
    by_path = dict(zip(files, again, strict=True))
    for path, data in files.items():
        got = by_path[path].downloaded
        assert got is not None and got.digests == digests_of(data)
        assert got.cached is (path != victim)
        assert (tmp_path / "b" / _name(path)).read_bytes() == data
    assert [r.status for r in server.requests_for(victim)] == [304, 206, 206]
    assert len(server.requests) == len(files) + 2


def test_a_304_that_does_not_name_our_etag_is_not_trusted(
    server: TestHTTPServer, http: HttpSource, cache: Cache, tmp_path: Path
) -> None:
    """A 304 without the ETag we hold proves nothing: the item goes the ordinary way, whose
    stat validates the entry (one more request), and the copy is still correct."""
    files = put_many(server, 4)
    _fetch(http, server, files, tmp_path / "a", cache)
    odd = next(iter(files))
    server.reset()
    server.faults.omit_etag(odd, times=1)
    again = download_many(
        items_for(http, server, list(files), tmp_path / "b"), SMALL_CFG, cache=cache
    )
    assert all(r.downloaded is not None and r.downloaded.cached for r in again)
    assert [r.range for r in server.requests_for(odd)] == [LANE_RANGE, "bytes=0-0"]
    assert len(server.requests) == len(files) + 1
    assert (tmp_path / "b" / _name(odd)).read_bytes() == files[odd]


# ------------------------------------------------------------------------ through prepare_inputs


@pytest.fixture
def site(tmp_path: Path) -> Iterator[TestHTTPServer]:
    root = tmp_path / "www"
    root.mkdir()
    with serve(root) as srv:
        for i in range(8):
            srv.put_file(f"/d/f{i}.bin", os.urandom(500 + i))
        yield srv


@pytest.fixture
def runtime(redis_private: RedisServer, tmp_path: Path) -> Iterator[Runtime]:
    settings = load_settings(
        {
            "HAUL_REDIS_URL": redis_private.url,
            "HAUL_DATA_DIR": str(tmp_path / "data"),
            "HAUL_ALLOW_PRIVATE_ADDRESSES": "true",
        }
    )
    rt = Runtime.from_settings(settings)
    assert rt.cache is not None
    yield rt
    rt.close()


def _message(site: TestHTTPServer, execution: str) -> PrepareInputs:
    urls = [site.url(f"/d/f{i}.bin") for i in range(8)]
    return PrepareInputs(
        execution_id=execution, project_id="p", inputs=[{"name": "x", "urls": urls}]
    )


def _events(rt: Runtime, execution: str, kind: str) -> list[dict[str, Any]]:
    raw = rt.redis.xrange(rt.settings.events_stream)
    found = [json.loads(fields[b"event"]) for _, fields in raw]
    return [e["data"] for e in found if e["type"] == kind and e["subject"] == execution]


def test_executions_with_a_warm_cache_report_cached_inputs_and_real_changes(
    site: TestHTTPServer, runtime: Runtime
) -> None:
    """Through the prepare_inputs job: a second execution gets every input from the cache with one
    304 each (``cached: true``, the same hashes, no change warning); after one file changes,
    a third gets that file's new bytes in the same answer and a change warning for it alone."""
    execute(runtime, PREPARE_INPUTS, _message(site, "e1"))
    first = {d["path"]: d for d in _events(runtime, "e1", "haul.input.downloaded")}
    assert len(first) == 8 and not any(d["cached"] for d in first.values())

    site.reset()
    result = execute(runtime, PREPARE_INPUTS, _message(site, "e2"))
    assert result["changed"] == []
    assert len(site.requests) == 8 and {r.status for r in site.requests} == {304}
    second = {d["path"]: d for d in _events(runtime, "e2", "haul.input.downloaded")}
    for path, d in second.items():
        assert d["cached"] is True
        assert (d["md5"], d["sha1"], d["sha256"], d["size"]) == (
            first[path]["md5"], first[path]["sha1"], first[path]["sha256"], first[path]["size"],
        )  # fmt: skip
        assert d["source"]["etag"] == first[path]["source"]["etag"]
    assert _events(runtime, "e2", "haul.input.changed") == []

    site.put_file("/d/f4.bin", b"replaced content")
    site.reset()
    result = execute(runtime, PREPARE_INPUTS, _message(site, "e3"))
    assert len(site.requests) == 8
    assert sorted(r.status for r in site.requests) == [206] + [304] * 7
    third = {d["path"]: d for d in _events(runtime, "e3", "haul.input.downloaded")}
    new = digests_of(b"replaced content")
    assert third["/valohai/inputs/x/f4.bin"]["cached"] is False
    assert third["/valohai/inputs/x/f4.bin"]["sha256"] == new.sha256
    assert sum(1 for d in third.values() if d["cached"]) == 7
    (change,) = _events(runtime, "e3", "haul.input.changed")
    assert change["input"] == "x" and change["current"]["sha256"] == new.sha256
    assert change["previous"]["sha256"] == first["/valohai/inputs/x/f4.bin"]["sha256"]
    assert change["previous"]["execution_id"] == "e2"
    assert [c["path"] for c in result["changed"]] == ["/valohai/inputs/x/f4.bin"]
    dest = runtime.execution_dir("e3") / "inputs" / "x" / "f4.bin"
    assert dest.read_bytes() == b"replaced content"


# ------------------------------------------------------------------------ the batch writer


def test_a_batch_makes_entries_visible_per_group_and_counts_each_byte_once(
    tmp_path: Path,
) -> None:
    """Entries added through a batch appear at each full group and at close (not before),
    are found by the ordinary lookup, and the usage file ends exact, evicting the least
    recently used entries to stay under the limit."""
    cache = Cache(tmp_path / "cache", max_bytes=4500)
    body = os.urandom(1000)
    digests = digests_of(body)

    def info(i: int) -> ObjectInfo:
        return ObjectInfo(key=f"k{i}", size=len(body), version=f'"v{i}"')

    with CacheBatch(cache, group=2) as batch:
        batch.add("s0", info(0), body, digests)
        assert cache.peek("s0") is None  # built, not yet visible
        batch.add("s1", info(1), body, digests)
        assert cache.peek("s0") is not None and cache.peek("s1") is not None
        batch.add("s2", info(2), body, digests)
        assert cache.peek("s2") is None
    assert cache.usage_bytes() == 3000
    hit = cache.lookup("s2", info(2))
    assert hit is not None and hit.digests == digests and hit.data.read_bytes() == body
    for name in ("s0", "s1", "s2"):  # s0 oldest, then s1, then s2
        held = cache.peek(name)
        assert held is not None
        stamp = {"s0": 1e9, "s1": 1.5e9, "s2": 2e9}[name]
        os.utime(held.entry / "meta.json", (stamp, stamp))

    with cache.batch() as batch:
        batch.add("s3", info(3), body, digests)
        batch.add("s4", info(4), body, digests)
    assert cache.usage_bytes() == 4000
    assert cache.peek("s0") is None  # the least recently used made room
    assert all(cache.peek(n) is not None for n in ("s1", "s2", "s3", "s4"))
    assert list((tmp_path / "cache" / "tmp").iterdir()) == []  # nothing built is left over


def test_read_confirmed_refuses_an_entry_changed_after_it_was_peeked(tmp_path: Path) -> None:
    """The bytes of a peeked entry are given only while its data file is the one recorded."""
    cache = Cache(tmp_path / "cache", max_bytes=10**6)
    body = b"cached bytes"
    with cache.batch() as batch:
        batch.add("s", ObjectInfo(key="k", size=len(body), version='"v"'), body, digests_of(body))
    held = cache.peek("s")
    assert held is not None and cache.read_confirmed(held) == body
    (held.entry / "data").write_bytes(b"other bytes!")
    assert cache.read_confirmed(held) is None


class _Watched(Cache):
    """A real cache that notes how many requests the server had seen at each entry lookup."""

    def __init__(self, root: Path, server: TestHTTPServer) -> None:
        super().__init__(root, max_bytes=10**7)
        self.server = server
        self.seen: list[int] = []

    def peek(self, source_id: str) -> CachedEntry | None:
        self.seen.append(len(self.server.requests))
        return super().peek(source_id)


def test_a_warm_batch_sends_its_first_requests_before_reading_every_entry(
    server: TestHTTPServer, http: HttpSource, tmp_path: Path
) -> None:
    """Each entry is read as its item's request is built: reading all of them before the
    first request (~40 ms for 2000) made a warm batch slower than a cold one at a latency."""
    files = put_many(server, 10 * SMALL_CFG.files_in_flight)
    cache = _Watched(tmp_path / "cache", server)
    assert all(r.ok for r in _fetch(http, server, files, tmp_path / "a", cache))
    cache.seen.clear()
    warm = _fetch(http, server, files, tmp_path / "b", cache)
    assert all(r.downloaded is not None and r.downloaded.cached for r in warm)
    assert len(server.requests) == len(files)  # still one conditional request per item
    assert len(cache.seen) == len(files)  # and one lookup per item
    # The lane takes two requests per connection ahead; every later lookup waits for an
    # answer, so the server has seen requests long before the last entry is read.
    ahead = 2 * SMALL_CFG.files_in_flight
    assert cache.seen[:ahead] == [0] * ahead
    assert cache.seen[-1] >= len(files) - ahead - SMALL_CFG.files_in_flight
