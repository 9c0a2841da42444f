"""The per-worker cache, many small files at once, uploads, and ``haul fetch``."""

from __future__ import annotations

import io
import os
import re
import threading
from pathlib import Path

import pytest

from tests.engine.conftest import SMALL_CFG, digests_of, leftovers
from tests.support.httpserver import TestHTTPServer
from worker.cli.fetch import run_fetch
from worker.errors import NotFound
from worker.hashing import Digests
from worker.settings import Settings
from worker.stores.base import ObjectInfo
from worker.stores.http import HttpSource
from worker.stores.local import LocalStore
from worker.transfer.batch import BatchItem, download_many
from worker.transfer.cache import Cache
from worker.transfer.download import download, source_id


def content_gets(server: TestHTTPServer, path: str) -> int:
    """GETs that transfer content (a stat asks for byte 0 only)."""
    return sum(1 for r in server.requests_for(path, "GET") if r.range != "bytes=0-0")


# ---------------------------------------------------------------------------------- cache


def test_cache_miss_then_hit_copies_without_downloading(
    server: TestHTTPServer, http: HttpSource, blob: bytes, tmp_path: Path
) -> None:
    """The second execution gets a copy from the cache: one stat, no body, no shared inode."""
    server.put_file("/data.bin", blob)
    cache = Cache(tmp_path / "cache", 10 * len(blob))
    url = server.url("/data.bin")
    first = download(http, url, tmp_path / "e1" / "data.bin", SMALL_CFG, cache=cache)
    assert not first.cached
    before = content_gets(server, "/data.bin")
    second = download(http, url, tmp_path / "e2" / "data.bin", SMALL_CFG, cache=cache)
    assert second.cached
    assert second.digests == first.digests == digests_of(blob)
    assert content_gets(server, "/data.bin") == before  # validated by a stat only
    assert (tmp_path / "e2" / "data.bin").read_bytes() == blob
    inodes = {(tmp_path / e / "data.bin").stat().st_ino for e in ("e1", "e2")}
    assert len(inodes) == 2  # an execution writing into its input cannot reach the cache
    assert leftovers(tmp_path / "e2") == []


def test_cache_invalidated_when_the_version_changes(
    server: TestHTTPServer, http: HttpSource, blob: bytes, tmp_path: Path
) -> None:
    server.put_file("/data.bin", blob)
    cache = Cache(tmp_path / "cache", 10 * len(blob))
    url = server.url("/data.bin")
    download(http, url, tmp_path / "e1" / "d", SMALL_CFG, cache=cache)
    new = blob[::-1]
    server.put_file("/data.bin", new)
    again = download(http, url, tmp_path / "e2" / "d", SMALL_CFG, cache=cache)
    assert not again.cached
    assert again.digests == digests_of(new)
    third = download(http, url, tmp_path / "e3" / "d", SMALL_CFG, cache=cache)
    assert third.cached and third.digests == digests_of(new)


def test_cache_entry_rewritten_in_place_is_not_reused(
    server: TestHTTPServer, http: HttpSource, tmp_path: Path
) -> None:
    """An execution writing into its (hard-linked) input must not poison the cache."""
    server.put_file("/s.txt", b"original")
    cache = Cache(tmp_path / "cache", 1 << 20)
    url = server.url("/s.txt")
    download(http, url, tmp_path / "e1" / "s.txt", SMALL_CFG, cache=cache)
    hit = download(http, url, tmp_path / "e0" / "s.txt", SMALL_CFG, cache=cache)
    assert hit.cached
    victim = tmp_path / "e0" / "s.txt"
    before = victim.stat()
    with victim.open("r+b") as fh:
        fh.write(b"tampered")
    # Same size, and the mtime set back.
    os.utime(victim, ns=(before.st_atime_ns, before.st_mtime_ns))
    got = download(http, url, tmp_path / "e2" / "s.txt", SMALL_CFG, cache=cache)
    assert got.cached  # the cache holds its own copy: untouched
    assert (tmp_path / "e2" / "s.txt").read_bytes() == b"original"
    assert got.digests == digests_of(b"original")


def test_cache_evicts_least_recently_used(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache", 250)
    infos = {}
    for name in ("a", "b", "c"):
        path = tmp_path / name
        path.write_bytes(name.encode() * 100)
        infos[name] = ObjectInfo(key=name, size=100, version=f'"{name}1"')
        cache.store(name, infos[name], path, digests_of(path.read_bytes()))
        if name == "b":
            hit = cache.lookup("a", infos["a"])  # "a" used again: "b" is now the oldest
            assert hit is not None
            os.utime(hit.entry / "meta.json", (2e9, 2e9))
    assert cache.lookup("b", infos["b"]) is None
    assert cache.lookup("a", infos["a"]) is not None
    assert cache.lookup("c", infos["c"]) is not None
    assert cache.usage_bytes() == 200


def test_cache_from_settings_respects_the_switch(tmp_path: Path) -> None:
    off = Settings(data_dir=tmp_path, cache_enabled=False)
    assert Cache.from_settings(off) is None
    on = Cache.from_settings(Settings(data_dir=tmp_path))
    assert on is not None and on.root == tmp_path / "cache"


def test_cache_is_safe_across_threads(tmp_path: Path) -> None:
    """Concurrent stores of many entries keep the usage count exact (flock-ed updates)."""
    cache = Cache(tmp_path / "cache", 10_000)
    barrier = threading.Barrier(4)

    def worker(n: int) -> None:
        barrier.wait()
        for i in range(10):
            path = tmp_path / f"f{n}-{i}"
            path.write_bytes(b"x" * 10)
            cache.store(
                f"{n}-{i}", ObjectInfo(key="k", size=10, version="v"), path, digests_of(b"x" * 10)
            )

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert cache.usage_bytes() == 400


# ---------------------------------------------------------------------------------- batch


def test_many_small_files_concurrently_with_reused_connections(
    server: TestHTTPServer, http: HttpSource, tmp_path: Path
) -> None:
    files = {f"/many/f{i}.bin": os.urandom(1000 + i) for i in range(120)}
    for path, data in files.items():
        server.put_file(path, data)
    items = [
        BatchItem(http, server.url(path), tmp_path / "in" / path.rsplit("/", 1)[1])
        for path in files
    ]
    seen: list[int] = []
    results = download_many(items, SMALL_CFG, on_done=lambda r: seen.append(r.index))
    assert sorted(seen) == list(range(len(items)))
    for (path, data), result in zip(files.items(), results, strict=True):
        assert result.ok and result.downloaded is not None
        assert result.downloaded.digests == digests_of(data)
        assert (tmp_path / "in" / path.rsplit("/", 1)[1]).read_bytes() == data
    assert len(server.requests) == len(files)  # one request per small file
    assert 1 < server.max_in_flight <= SMALL_CFG.files_in_flight
    assert len({r.client_port for r in server.requests}) <= SMALL_CFG.files_in_flight


def test_batch_reports_per_item_errors(
    server: TestHTTPServer, http: HttpSource, blob: bytes, tmp_path: Path
) -> None:
    server.put_file("/big.bin", blob)
    server.put_file("/ok.txt", b"fine")
    items = [
        BatchItem(http, server.url("/ok.txt"), tmp_path / "ok.txt"),
        BatchItem(http, server.url("/missing"), tmp_path / "missing"),
        BatchItem(http, server.url("/big.bin"), tmp_path / "big.bin", label="big"),
    ]
    results = download_many(items, SMALL_CFG)
    assert [r.ok for r in results] == [True, False, True]
    assert isinstance(results[1].error, NotFound)
    assert results[2].downloaded is not None
    assert results[2].downloaded.digests == digests_of(blob)


# ---------------------------------------------------------------------------------- upload


def test_upload_then_deduplicated(tmp_path: Path, blob: bytes) -> None:
    """The second upload of the same content sends nothing and reports deduplicated."""
    from worker.transfer.upload import upload

    store = LocalStore("plain", tmp_path / "store")
    src = tmp_path / "out.bin"
    src.write_bytes(blob)

    def key_for(d: Digests) -> str:
        return f"data/{d.sha256}"

    first = upload(store, src, key_for, SMALL_CFG)
    assert first.digests == digests_of(blob) and not first.deduplicated
    assert (store.root / first.key).read_bytes() == blob
    mtime = (store.root / first.key).stat().st_mtime_ns
    again = upload(store, src, key_for, SMALL_CFG)
    assert again.deduplicated and again.key == first.key
    assert (store.root / first.key).stat().st_mtime_ns == mtime


def test_upload_small_file_uses_conditional_create(tmp_path: Path) -> None:
    from worker.transfer.upload import upload

    store = LocalStore("plain", tmp_path / "store")
    src = tmp_path / "o.txt"
    src.write_bytes(b"output")
    got = upload(store, src, lambda d: f"data/{d.sha256}", SMALL_CFG)
    assert got.digests == digests_of(b"output")
    assert (store.root / got.key).read_bytes() == b"output"


# ---------------------------------------------------------------------------------- fetch


def test_run_fetch_prints_seed_format_lines(
    server: TestHTTPServer, blob: bytes, tmp_path: Path
) -> None:
    server.put_file("/d/train-labels.gz", blob)
    out = io.StringIO()
    settings = Settings(data_dir=tmp_path / "data", allow_private_addresses=True)
    rc = run_fetch([server.url("/d/train-labels.gz")], tmp_path / "to", settings, out)
    assert rc == 0
    d = digests_of(blob)
    path = tmp_path / "to" / "train-labels.gz"
    lines = out.getvalue().splitlines()
    assert [re.sub(r"^\d\d:\d\d:\d\d ", "", line) for line in lines] == [
        f"{path}: downloaded, 654.4 kB",
        f"{path}: md5 sum: {d.md5}",
        f"{path}: sha1 sum: {d.sha1}",
        f"{path}: sha256 sum: {d.sha256}",
    ]
    assert all(re.match(r"^\d\d:\d\d:\d\d ", line) for line in lines)


def test_run_fetch_reports_failures(server: TestHTTPServer, tmp_path: Path) -> None:
    out = io.StringIO()
    settings = Settings(data_dir=tmp_path / "data", allow_private_addresses=True)
    assert run_fetch([server.url("/nope")], tmp_path / "to", settings, out) == 1
    assert ": error: " in out.getvalue()


def test_private_addresses_refused_without_the_setting(
    server: TestHTTPServer, tmp_path: Path
) -> None:
    out = io.StringIO()
    settings = Settings(data_dir=tmp_path / "data")
    server.put_file("/x", b"x")
    assert run_fetch([server.url("/x")], tmp_path / "to", settings, out) == 1
    assert "non-public address" in out.getvalue()
    assert server.requests == []


@pytest.mark.parametrize("name", ["a.bin"])
def test_source_id_has_no_credentials(server: TestHTTPServer, http: HttpSource, name: str) -> None:
    url = server.url(f"/{name}", auth=("user", "secret")) + "?X-Amz-Signature=abc"
    sid = source_id(http, url)
    assert "secret" not in sid and "abc" not in sid
