"""The small-object lane of a batch: whole small objects on one thread, the rest handed back."""

from __future__ import annotations

import dataclasses
import errno
import os
import socketserver
import ssl
import threading
from pathlib import Path

import pytest

from tests.engine.conftest import SMALL_CFG, digests_of, leftovers
from tests.support.httpserver import TestHTTPServer, serve
from worker.errors import (
    DestinationError,
    DiskFullError,
    ForbiddenAddress,
    Interrupted,
    NotFound,
    SourceError,
)
from worker.stores.http import HttpSource
from worker.transfer import place
from worker.transfer.batch import BatchItem, BatchResult, download_many
from worker.transfer.cache import Cache
from worker.transfer.place import write_whole

LANE_RANGE = f"bytes=0-{SMALL_CFG.multipart_threshold_bytes - 1}"


def lane_requests(server: TestHTTPServer, path: str) -> int:
    return sum(1 for r in server.requests_for(path, "GET") if r.range == LANE_RANGE)


def put_many(server: TestHTTPServer, count: int, size: int = 900) -> dict[str, bytes]:
    files = {f"/many/f{i:03d}.bin": os.urandom(size + i) for i in range(count)}
    for path, data in files.items():
        server.put_file(path, data)
    return files


def items_for(
    http: HttpSource, server: TestHTTPServer, paths: list[str], to: Path
) -> list[BatchItem]:
    return [BatchItem(http, server.url(p), to / p.rsplit("/", 1)[1]) for p in paths]


def test_small_objects_take_one_request_each_on_few_connections(
    server: TestHTTPServer, http: HttpSource, tmp_path: Path
) -> None:
    files = put_many(server, 200)
    to = tmp_path / "in"
    results = download_many(items_for(http, server, list(files), to), SMALL_CFG)
    for (path, data), result in zip(files.items(), results, strict=True):
        assert result.downloaded is not None, result.error
        assert result.downloaded.digests == digests_of(data)
        assert result.downloaded.info.size == len(data)
        assert (to / path.rsplit("/", 1)[1]).read_bytes() == data
        assert lane_requests(server, path) == 1
    assert len(server.requests) == len(files)
    assert len({r.client_port for r in server.requests}) <= SMALL_CFG.files_in_flight
    assert leftovers(to) == []


def test_what_the_lane_cannot_take_goes_the_ordinary_way(
    server: TestHTTPServer, http: HttpSource, blob: bytes, tmp_path: Path
) -> None:
    small = os.urandom(5000)
    server.put_file("/big.bin", blob)  # above the threshold: chunked
    server.put_file("/small.bin", small)
    server.put_file("/chunked.bin", small)
    server.put_file("/empty.bin", b"")
    server.faults.no_content_length("/chunked.bin", times=1)
    items = [
        BatchItem(http, server.url("/big.bin"), tmp_path / "big.bin"),
        BatchItem(http, server.redirect_url("/small.bin", hops=2), tmp_path / "moved.bin"),
        BatchItem(http, server.url("/missing.bin"), tmp_path / "missing.bin"),
        BatchItem(http, server.url("/chunked.bin"), tmp_path / "chunked.bin"),
        BatchItem(http, server.url("/empty.bin"), tmp_path / "empty.bin"),
    ]
    big, moved, missing, chunked, empty = download_many(items, SMALL_CFG)
    assert big.downloaded is not None and big.downloaded.digests == digests_of(blob)
    assert moved.downloaded is not None and moved.downloaded.digests == digests_of(small)
    assert isinstance(missing.error, NotFound)
    assert chunked.downloaded is not None and chunked.downloaded.digests == digests_of(small)
    assert empty.downloaded is not None and empty.downloaded.digests == digests_of(b"")
    assert (tmp_path / "empty.bin").read_bytes() == b""
    # The lane asked once for each, then handed them back.
    assert lane_requests(server, "/big.bin") == 1
    assert lane_requests(server, "/chunked.bin") == 1
    assert len(server.requests_for("/chunked.bin", "GET")) == 2
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("fault", ["truncate", "reset", "server_error"])
def test_a_broken_answer_is_fetched_again_the_ordinary_way(
    server: TestHTTPServer, http: HttpSource, tmp_path: Path, fault: str
) -> None:
    files = put_many(server, 30, size=4000)
    bad = "/many/f007.bin"
    if fault == "truncate":
        server.faults.truncate(bad, after_bytes=100)
    elif fault == "reset":
        server.faults.reset_connection(bad, after_bytes=200)
    else:
        server.faults.fail_next(bad, status=503)
    results = download_many(items_for(http, server, list(files), tmp_path), SMALL_CFG)
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    for (_path, data), result in zip(files.items(), results, strict=True):
        assert result.downloaded is not None and result.downloaded.digests == digests_of(data)
    assert len(server.requests_for(bad, "GET")) == 2
    assert (tmp_path / "f007.bin").read_bytes() == files[bad]


def test_a_stalled_answer_times_out_and_goes_the_ordinary_way(
    server: TestHTTPServer, tmp_path: Path
) -> None:
    files = put_many(server, 5)
    stall = server.faults.stall("/many/f002.bin", seconds=5.0)
    http = HttpSource(allow_private=True, timeout_s=0.5)
    try:
        results = download_many(items_for(http, server, list(files), tmp_path), SMALL_CFG)
    finally:
        http.close()
        stall.release()
    assert all(r.ok for r in results)
    assert len(server.requests_for("/many/f002.bin", "GET")) == 2


def test_private_addresses_are_refused_before_any_request(
    server: TestHTTPServer, tmp_path: Path
) -> None:
    files = put_many(server, 3)
    http = HttpSource(allow_private=False)
    to = tmp_path / "in"
    try:
        results = download_many(items_for(http, server, list(files), to), SMALL_CFG)
    finally:
        http.close()
    assert all(isinstance(r.error, ForbiddenAddress) for r in results)
    assert server.requests == []
    assert not to.exists() or list(to.iterdir()) == []


def test_an_existing_file_is_replaced_and_a_symlink_is_not_followed(
    server: TestHTTPServer, http: HttpSource, tmp_path: Path
) -> None:
    server.put_file("/a.bin", b"new a")
    server.put_file("/b.bin", b"new b")
    to = tmp_path / "in"
    to.mkdir()
    (to / "a.bin").write_bytes(b"old")
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"precious")
    (to / "b.bin").symlink_to(outside)
    results = download_many(items_for(http, server, ["/a.bin", "/b.bin"], to), SMALL_CFG)
    assert all(r.ok for r in results)
    assert (to / "a.bin").read_bytes() == b"new a"
    assert not (to / "b.bin").is_symlink()
    assert (to / "b.bin").read_bytes() == b"new b"
    assert outside.read_bytes() == b"precious"
    assert leftovers(to) == []


def test_https_through_the_lane(www: Path, tmp_path: Path) -> None:
    with serve(www, tls=True) as srv:
        files = put_many(srv, 20)
        trusted = HttpSource(
            allow_private=True, verify=ssl.create_default_context(cafile=str(srv.cafile))
        )
        untrusted = HttpSource(allow_private=True)
        try:
            good = download_many(items_for(trusted, srv, list(files), tmp_path / "a"), SMALL_CFG)
            assert all(lane_requests(srv, p) == 1 for p in files)
            assert len(srv.requests) == len(files)
            srv.reset()
            bad = download_many(items_for(untrusted, srv, list(files), tmp_path / "b"), SMALL_CFG)
        finally:
            trusted.close()
            untrusted.close()
    for (_path, data), result in zip(files.items(), good, strict=True):
        assert result.downloaded is not None and result.downloaded.digests == digests_of(data)
    assert all(isinstance(r.error, SourceError) and "certificate" in str(r.error) for r in bad)


def test_stop_interrupts_what_has_not_finished(
    server: TestHTTPServer, http: HttpSource, tmp_path: Path
) -> None:
    files = put_many(server, 200)
    stop = threading.Event()
    seen: list[BatchResult] = []

    def on_done(result: BatchResult) -> None:
        seen.append(result)
        if len(seen) == 10:
            stop.set()

    results = download_many(
        items_for(http, server, list(files), tmp_path), SMALL_CFG, on_done=on_done, stop=stop
    )
    assert len(results) == len(files) == len(seen)
    interrupted = [r for r in results if isinstance(r.error, Interrupted)]
    assert interrupted and all(r.ok or r in interrupted for r in results)
    for result in results:
        if result.ok:
            assert (tmp_path / result.item.dest.name).exists()
        else:
            assert not (tmp_path / result.item.dest.name).exists()
    assert leftovers(tmp_path) == []


def test_cached_items_are_validated_instead_of_fetched(
    server: TestHTTPServer, http: HttpSource, tmp_path: Path
) -> None:
    """A cached item costs one conditional lane request, answered 304 with no body."""
    files = put_many(server, 10)
    cache = Cache(tmp_path / "cache", max_bytes=10**7)
    first = download_many(
        items_for(http, server, list(files), tmp_path / "a"), SMALL_CFG, cache=cache
    )
    assert all(r.ok and r.downloaded and not r.downloaded.cached for r in first)
    server.reset()
    again = download_many(
        items_for(http, server, list(files), tmp_path / "b"), SMALL_CFG, cache=cache
    )
    assert all(r.downloaded is not None and r.downloaded.cached for r in again)
    assert len(server.requests) == len(files)  # validation only: one request each
    assert {r.range for r in server.requests} == {LANE_RANGE}
    assert all(r.if_none_match and r.status == 304 for r in server.requests)
    assert server.bytes_sent == 0
    for path, data in files.items():
        assert (tmp_path / "b" / path.rsplit("/", 1)[1]).read_bytes() == data


def test_the_lane_can_be_turned_off(
    server: TestHTTPServer, http: HttpSource, tmp_path: Path
) -> None:
    files = put_many(server, 5)
    cfg = dataclasses.replace(SMALL_CFG, small_lane=False)
    results = download_many(items_for(http, server, list(files), tmp_path), cfg)
    assert all(r.ok for r in results)
    assert all(lane_requests(server, p) == 0 for p in files)


# ---------------------------------------------------------------------------------- placing


@pytest.mark.parametrize("tmpfile", [True, False], ids=["O_TMPFILE", "part-file"])
def test_write_whole_creates_replaces_and_never_follows_symlinks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tmpfile: bool
) -> None:
    if not tmpfile:
        monkeypatch.setattr(place, "_TMPFILE", 0)
    write_whole(tmp_path / "new", b"one")
    assert (tmp_path / "new").read_bytes() == b"one"
    write_whole(tmp_path / "new", b"two")
    assert (tmp_path / "new").read_bytes() == b"two"
    target = tmp_path / "target"
    target.write_bytes(b"keep")
    (tmp_path / "link").symlink_to(target)
    (tmp_path / "link.haul-part").symlink_to(target)  # a planted part name, too
    write_whole(tmp_path / "link", b"three")
    assert not (tmp_path / "link").is_symlink()
    assert (tmp_path / "link").read_bytes() == b"three"
    assert target.read_bytes() == b"keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "new", "target"]


def test_write_whole_on_a_full_disk_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int, data: object, offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)
    for tmpfile in (place._TMPFILE, 0):
        monkeypatch.setattr(place, "_TMPFILE", tmpfile)
        with pytest.raises(DiskFullError):
            write_whole(tmp_path / "f", b"data")
        assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------- review


def test_a_folder_at_a_destination_fails_that_item_only(
    server: TestHTTPServer, http: HttpSource, tmp_path: Path
) -> None:
    files = put_many(server, 6)
    to = tmp_path / "in"
    (to / "f002.bin").mkdir(parents=True)
    seen: list[BatchResult] = []
    results = download_many(
        items_for(http, server, list(files), to), SMALL_CFG, on_done=seen.append
    )
    assert len(results) == len(seen) == len(files)
    bad = results[2]
    assert isinstance(bad.error, DestinationError), bad.error
    assert "f002.bin" in str(bad.error)
    assert all(r.ok for i, r in enumerate(results) if i != 2)
    assert (to / "f002.bin").is_dir()
    assert leftovers(to) == []


def test_thousands_of_folders_do_not_hold_a_descriptor_each(
    server: TestHTTPServer, http: HttpSource, tmp_path: Path
) -> None:
    files = put_many(server, 150)
    items = [
        BatchItem(http, server.url(p), tmp_path / f"d{i}" / "sub" / "f.bin")
        for i, p in enumerate(files)
    ]
    before = len(os.listdir("/proc/self/fd"))
    most = [before]

    def sample(result: BatchResult) -> None:
        most[0] = max(most[0], len(os.listdir("/proc/self/fd")))

    results = download_many(items, SMALL_CFG, on_done=sample)
    assert all(r.ok for r in results)
    # Connections at both ends (the test server runs in this process) and a few folders.
    assert most[0] - before <= 2 * SMALL_CFG.files_in_flight + 16 + 10 < len(files)
    for i, data in enumerate(files.values()):
        assert (tmp_path / f"d{i}" / "sub" / "f.bin").read_bytes() == data


def test_a_part_file_left_by_an_interrupted_download_is_removed(
    server: TestHTTPServer, http: HttpSource, tmp_path: Path
) -> None:
    files = put_many(server, 3)
    for lane in (True, False):
        to = tmp_path / f"lane-{lane}"
        to.mkdir()
        for path in files:
            (to / (path.rsplit("/", 1)[1] + ".haul-part")).write_bytes(b"stale")
        cfg = dataclasses.replace(SMALL_CFG, small_lane=lane)
        results = download_many(items_for(http, server, list(files), to), cfg)
        assert all(r.ok for r in results)
        assert leftovers(to) == []


def test_a_host_that_keeps_failing_leaves_the_lane(
    server: TestHTTPServer, http: HttpSource, tmp_path: Path
) -> None:
    files = put_many(server, 60)
    server.faults.reset_connection("/many/*", times=None)
    results = download_many(items_for(http, server, list(files), tmp_path), SMALL_CFG)
    assert not any(r.ok for r in results)
    lane_tries = sum(lane_requests(server, p) for p in files)
    # Those already sent when the fourth failure came back, then none.
    assert lane_tries <= 4 + SMALL_CFG.files_in_flight < len(files)


class _BareLF(socketserver.StreamRequestHandler):
    """Answers every request with header lines ended by a bare LF (http.client accepts it)."""

    def handle(self) -> None:
        while True:
            line = self.rfile.readline()
            if not line:
                return
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            body = b"bare-lf body"
            head = f'HTTP/1.1 200 OK\nContent-Length: {len(body)}\nETag: "x"\n\n'
            self.wfile.write(head.encode() + body)
            self.server.requests += 1  # type: ignore[attr-defined]


def test_bare_lf_answers_go_the_ordinary_way_at_once(tmp_path: Path) -> None:
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), _BareLF) as srv:
        srv.daemon_threads = True
        srv.requests = 0  # type: ignore[attr-defined]
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{srv.server_address[1]}"
        # A lane that waited for the timeout would hold this test for 20 minutes per batch.
        http = HttpSource(allow_private=True, timeout_s=1200)
        try:
            items = [BatchItem(http, f"{base}/f{i}", tmp_path / f"f{i}") for i in range(8)]
            results = download_many(items, SMALL_CFG)
        finally:
            http.close()
            srv.shutdown()
    assert all(r.ok for r in results), [r.error for r in results]
    assert all((tmp_path / f"f{i}").read_bytes() == b"bare-lf body" for i in range(8))


@pytest.mark.parametrize(
    "url",
    ["http://b\u00fccher.example/x", "http://127.0.0.1:99999/x", "http://h/a b", "ftp://h/x"],
)
def test_unusual_urls_are_handed_back(url: str) -> None:
    """A URL the lane cannot send as it is (a host needing IDNA, a bad port, a space, not
    http) gets no lane request: the ordinary path decides about it."""
    from worker.net.lane import lane_request

    assert lane_request(0, url) is None
    assert lane_request(0, "http://127.0.0.1:8080/ok?q=1") is not None
