"""The fault-injecting test HTTP server itself behaves."""

from __future__ import annotations

import hashlib
import http.client
import os
import queue
import random
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.httpserver import ControlClient, TestHTTPServer, serve

REPO = Path(__file__).resolve().parents[2]
SIZE = 1 << 20
DATA = random.Random(1234).randbytes(SIZE)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "private").mkdir(parents=True)
    (root / "data.bin").write_bytes(DATA)
    (root / "empty.bin").write_bytes(b"")
    (root / "private" / "secret.bin").write_bytes(b"top secret")
    (tmp_path / "outside.txt").write_bytes(b"must not be served")
    return root


@pytest.fixture
def server(root: Path) -> Iterator[TestHTTPServer]:
    with serve(root) as srv:
        yield srv


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(trust_env=False, timeout=30) as c:
        yield c


def raw_get(server: TestHTTPServer, target: str) -> int:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
    try:
        conn.request("GET", target)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


# ------------------------------------------------------------------ plain serving


def test_get_full_file_with_validators(server: TestHTTPServer, client: httpx.Client) -> None:
    r = client.get(server.url("/data.bin"))
    assert r.status_code == 200
    assert r.content == DATA
    assert r.headers["content-length"] == str(SIZE)
    assert r.headers["accept-ranges"] == "bytes"
    assert r.headers["etag"] == f'"{hashlib.sha1(DATA).hexdigest()[:16]}"'
    assert "last-modified" in r.headers
    [rec] = server.requests
    assert (rec.method, rec.path, rec.status, rec.bytes_sent) == ("GET", "/data.bin", 200, SIZE)
    assert server.bytes_sent == SIZE


def test_head_has_headers_and_no_body(server: TestHTTPServer, client: httpx.Client) -> None:
    r = client.head(server.url("/data.bin"))
    assert r.status_code == 200
    assert r.headers["content-length"] == str(SIZE)
    assert r.content == b""
    assert server.requests[0].method == "HEAD"
    assert server.bytes_sent == 0


def test_missing_file_and_directory_are_404(server: TestHTTPServer, client: httpx.Client) -> None:
    assert client.get(server.url("/nope.bin")).status_code == 404
    assert client.get(server.url("/private/")).status_code in (401, 404)
    assert client.get(server.url("/")).status_code == 404


def test_path_traversal_is_refused(server: TestHTTPServer) -> None:
    for target in ("/../outside.txt", "/%2e%2e/outside.txt", "/a/../../outside.txt"):
        assert raw_get(server, target) in (403, 404), target


def test_keep_alive_reuses_the_connection(server: TestHTTPServer, client: httpx.Client) -> None:
    client.get(server.url("/data.bin"))
    client.get(server.url("/data.bin"))
    first, second = server.requests
    assert first.client_port == second.client_port


# ------------------------------------------------------------------ ranges and conditionals


@pytest.mark.parametrize(
    ("header", "first", "last"),
    [
        ("bytes=10-19", 10, 19),
        ("bytes=1000-", 1000, SIZE - 1),
        ("bytes=-5", SIZE - 5, SIZE - 1),
        (f"bytes=5-{SIZE + 100}", 5, SIZE - 1),
    ],
)
def test_ranges(
    server: TestHTTPServer, client: httpx.Client, header: str, first: int, last: int
) -> None:
    r = client.get(server.url("/data.bin"), headers={"Range": header})
    assert r.status_code == 206
    assert r.headers["content-range"] == f"bytes {first}-{last}/{SIZE}"
    assert r.content == DATA[first : last + 1]
    [rec] = server.requests
    assert rec.range == header
    assert rec.bytes_sent == last - first + 1


@pytest.mark.parametrize("header", [f"bytes={SIZE}-", "bytes=-0"])
def test_unsatisfiable_range_is_416(
    server: TestHTTPServer, client: httpx.Client, header: str
) -> None:
    r = client.get(server.url("/data.bin"), headers={"Range": header})
    assert r.status_code == 416
    assert r.headers["content-range"] == f"bytes */{SIZE}"


def test_range_on_empty_file_is_416(server: TestHTTPServer, client: httpx.Client) -> None:
    r = client.get(server.url("/empty.bin"), headers={"Range": "bytes=0-"})
    assert r.status_code == 416
    assert client.get(server.url("/empty.bin")).content == b""


def test_if_match(server: TestHTTPServer, client: httpx.Client) -> None:
    etag = client.head(server.url("/data.bin")).headers["etag"]
    ok = client.get(server.url("/data.bin"), headers={"Range": "bytes=0-9", "If-Match": etag})
    assert ok.status_code == 206
    assert ok.content == DATA[:10]
    bad = client.get(server.url("/data.bin"), headers={"Range": "bytes=0-9", "If-Match": '"x"'})
    assert bad.status_code == 412
    assert server.requests[-1].if_match == '"x"'


def test_if_none_match_is_304(server: TestHTTPServer, client: httpx.Client) -> None:
    etag = client.head(server.url("/data.bin")).headers["etag"]
    r = client.get(server.url("/data.bin"), headers={"If-None-Match": etag})
    assert r.status_code == 304
    assert r.content == b""
    assert client.get(server.url("/data.bin"), headers={"If-None-Match": '"x"'}).status_code == 200
    assert server.requests[1].is_conditional


def test_if_range_mismatch_sends_whole_body(server: TestHTTPServer, client: httpx.Client) -> None:
    r = client.get(server.url("/data.bin"), headers={"Range": "bytes=0-9", "If-Range": '"old"'})
    assert r.status_code == 200
    assert r.content == DATA


# ------------------------------------------------------------------ redirects and auth


def test_redirect_chain(server: TestHTTPServer, client: httpx.Client) -> None:
    r = client.get(server.redirect_url("data.bin", hops=3), follow_redirects=True)
    assert r.status_code == 200
    assert r.content == DATA
    assert [h.status_code for h in r.history] == [302, 302, 302]
    assert [rec.path for rec in server.requests] == [
        "/redirect/3/data.bin",
        "/redirect/2/data.bin",
        "/redirect/1/data.bin",
        "/data.bin",
    ]


def test_redirect_to_arbitrary_url(server: TestHTTPServer, client: httpx.Client) -> None:
    target = "http://10.0.0.1:8080/x?y=1"
    r = client.get(server.redirect_to_url(target))
    assert r.status_code == 302
    assert r.headers["location"] == target


def test_private_prefix_needs_basic_auth(server: TestHTTPServer, client: httpx.Client) -> None:
    assert client.get(server.url("/private/secret.bin")).status_code == 401
    r = client.get(server.url("/private/secret.bin", auth=("u", "p")))
    assert r.status_code == 200
    assert r.content == b"top secret"
    assert client.get(server.url("/private/secret.bin", auth=("u", "x"))).status_code == 401
    assert server.requests[1].authorization == "Basic dTpw"


# ------------------------------------------------------------------ faults


def test_fail_next(server: TestHTTPServer, client: httpx.Client) -> None:
    server.faults.fail_next("/data.bin", 2, 503, headers={"Retry-After": "0"})
    statuses = [client.get(server.url("/data.bin")).status_code for _ in range(3)]
    assert statuses == [503, 503, 200]
    assert server.requests[0].faults == ["fail"]


def test_truncate_gives_short_body(server: TestHTTPServer, client: httpx.Client) -> None:
    server.faults.truncate("/data.bin", 1000)
    got = bytearray()
    with (
        pytest.raises(httpx.RemoteProtocolError),
        client.stream("GET", server.url("/data.bin")) as r,
    ):
        assert r.headers["content-length"] == str(SIZE)
        for chunk in r.iter_raw():
            got += chunk
    assert bytes(got) == DATA[:1000]
    assert server.requests[0].bytes_sent == 1000
    assert client.get(server.url("/data.bin")).content == DATA  # only once


def test_truncate_applies_to_ranged_body(server: TestHTTPServer, client: httpx.Client) -> None:
    server.faults.truncate("/data.bin", 10)
    got = bytearray()
    with (
        pytest.raises(httpx.RemoteProtocolError),
        client.stream("GET", server.url("/data.bin"), headers={"Range": "bytes=100-"}) as r,
    ):
        for chunk in r.iter_raw():
            got += chunk
    assert bytes(got) == DATA[100:110]


def test_reset_connection_on_nth_request(server: TestHTTPServer, client: httpx.Client) -> None:
    server.faults.reset_connection("/data.bin", nth=2)
    assert client.get(server.url("/data.bin")).status_code == 200
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        client.get(server.url("/data.bin"))
    assert client.get(server.url("/data.bin")).content == DATA


def test_reset_connection_mid_body(server: TestHTTPServer, client: httpx.Client) -> None:
    server.faults.reset_connection("/data.bin", after_bytes=4096)
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        client.get(server.url("/data.bin"))
    assert server.requests[0].bytes_sent == 4096


def test_stall_until_released(server: TestHTTPServer, client: httpx.Client) -> None:
    stall = server.faults.stall("/data.bin")
    result: list[bytes] = []
    t = threading.Thread(target=lambda: result.append(client.get(server.url("/data.bin")).content))
    t.start()
    assert stall.wait_reached(10)
    assert not result
    assert server.in_flight == 1
    stall.release()
    t.join(10)
    assert result == [DATA]


def test_stall_times_out_after_seconds(server: TestHTTPServer, client: httpx.Client) -> None:
    server.faults.stall("/data.bin", 0.05, before_headers=True)
    assert client.get(server.url("/data.bin")).content == DATA


def test_stall_triggers_client_read_timeout(server: TestHTTPServer) -> None:
    stall = server.faults.stall("/data.bin", after_bytes=100)
    with (
        httpx.Client(trust_env=False, timeout=httpx.Timeout(5, read=0.2)) as c,
        pytest.raises(httpx.ReadTimeout),
    ):
        c.get(server.url("/data.bin"))
    assert stall.reached.is_set()
    stall.release()


def test_ignore_range(server: TestHTTPServer, client: httpx.Client) -> None:
    server.faults.ignore_range("/data.bin")
    r = client.get(server.url("/data.bin"), headers={"Range": "bytes=0-9"})
    assert r.status_code == 200
    assert r.content == DATA
    assert "accept-ranges" not in r.headers


def test_omit_etag(server: TestHTTPServer, client: httpx.Client) -> None:
    server.faults.omit_etag("/data.bin", times=1)
    assert "etag" not in client.head(server.url("/data.bin")).headers
    assert "etag" in client.head(server.url("/data.bin")).headers


def test_replace_after_first_read_changes_etag(
    server: TestHTTPServer, client: httpx.Client
) -> None:
    server.faults.replace_after_first_read("/data.bin", b"new content")
    first = client.get(server.url("/data.bin"), headers={"Range": "bytes=0-9"})
    assert first.status_code == 206
    assert first.content == DATA[:10]
    old_etag = first.headers["etag"]
    pinned = client.get(
        server.url("/data.bin"), headers={"Range": "bytes=10-19", "If-Match": old_etag}
    )
    assert pinned.status_code == 412
    fresh = client.get(server.url("/data.bin"))
    assert fresh.content == b"new content"
    assert fresh.headers["etag"] != old_etag


def test_corrupt_flips_one_byte(server: TestHTTPServer, client: httpx.Client) -> None:
    server.faults.corrupt("/data.bin", 500, times=1)
    body = client.get(server.url("/data.bin")).content
    assert len(body) == SIZE
    assert body[500] == DATA[500] ^ 0xFF
    assert body[:500] == DATA[:500]
    assert body[501:] == DATA[501:]


@pytest.mark.parametrize("chunked", [True, False])
def test_no_content_length(server: TestHTTPServer, client: httpx.Client, chunked: bool) -> None:
    server.faults.no_content_length("/data.bin", chunked=chunked)
    r = client.get(server.url("/data.bin"))
    assert "content-length" not in r.headers
    assert r.content == DATA


def test_throttle_still_delivers(server: TestHTTPServer, client: httpx.Client) -> None:
    server.put_file("small.bin", b"x" * 20_000)
    server.faults.throttle("/small.bin", 1_000_000)
    assert client.get(server.url("/small.bin")).content == b"x" * 20_000


def test_hook_barrier_and_max_in_flight(server: TestHTTPServer) -> None:
    barrier = threading.Barrier(3, timeout=10)
    server.faults.on_request(lambda rec: barrier.wait(), "/data.bin")
    results: list[int] = []

    def fetch() -> None:
        with httpx.Client(trust_env=False, timeout=30) as c:
            results.append(len(c.get(server.url("/data.bin")).content))

    threads = [threading.Thread(target=fetch) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert results == [SIZE] * 3
    assert server.max_in_flight == 3
    assert server.wait_idle(10)
    assert server.bytes_sent == 3 * SIZE


def test_reset_clears_everything(server: TestHTTPServer, client: httpx.Client) -> None:
    server.faults.fail_next("*", 5)
    assert client.get(server.url("/data.bin")).status_code == 503
    server.reset()
    assert server.requests == []
    assert server.bytes_sent == 0
    assert client.get(server.url("/data.bin")).status_code == 200


def test_control_endpoint_in_process(server: TestHTTPServer, client: httpx.Client) -> None:
    ctl = ControlClient(server.base_url)
    ctl.fail_next("/data.bin", 1, 500)
    ctl.replace_after_first_read("/empty.bin", b"abc", after=2)
    assert client.get(server.url("/data.bin")).status_code == 500
    assert client.get(server.url("/empty.bin")).content == b""
    assert client.get(server.url("/empty.bin")).content == b""
    assert client.get(server.url("/empty.bin")).content == b"abc"
    assert [r.status for r in ctl.requests()] == [500, 200, 200, 200]
    assert ctl.stats()["requests"] == 4


# ------------------------------------------------------------------ TLS and big files


def test_tls(root: Path) -> None:
    with serve(root, tls=True) as srv:
        assert srv.cafile is not None
        assert srv.url("/data.bin").startswith("https://127.0.0.1:")
        ctx = ssl.create_default_context(cafile=str(srv.cafile))
        with httpx.Client(trust_env=False, verify=ctx, timeout=30) as c:
            assert c.get(srv.url("/data.bin")).content == DATA
            r = c.get(srv.url("/data.bin"), headers={"Range": "bytes=7-8"})
            assert r.content == DATA[7:9]
        with httpx.Client(trust_env=False, timeout=30) as c, pytest.raises(httpx.ConnectError):
            c.get(srv.url("/data.bin"))  # untrusted CA


def test_large_file_streams_intact(root: Path, client: httpx.Client) -> None:
    big = os.urandom(48 << 20)
    (root / "big.bin").write_bytes(big)
    with serve(root) as srv:
        h = hashlib.sha256()
        with client.stream("GET", srv.url("/big.bin")) as r:
            for chunk in r.iter_raw(1 << 20):
                h.update(chunk)
        assert h.digest() == hashlib.sha256(big).digest()


# ------------------------------------------------------------------ subprocess mode


def _line_reader(proc: subprocess.Popen[str]) -> tuple[queue.Queue[str], threading.Thread]:
    """Feed the subprocess's stdout lines into a queue (a select on a buffered pipe
    would miss lines already read into the buffer)."""
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    stdout = proc.stdout

    def pump() -> None:
        for line in stdout:
            lines.put(line)

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    return lines, thread


@pytest.mark.parametrize("tls", [False, True])
def test_subprocess_mode_prints_ready(root: Path, tls: bool) -> None:
    cmd = [sys.executable, "-m", "tests.support.httpserver", "--root", str(root), "--port", "0"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [*cmd, "--tls"] if tls else cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        lines, pump = _line_reader(proc)
        cafile: str | None = None
        line = lines.get(timeout=30)
        if tls:
            assert line.startswith("CAFILE ")
            cafile = line.split(" ", 1)[1].strip()
            line = lines.get(timeout=30)
        assert line.startswith("READY "), line
        base = line.split()[1]
        assert base.startswith(("https" if tls else "http") + "://127.0.0.1:")
        ctl = ControlClient(base, cafile=cafile)
        ctl.fail_next("/data.bin", 1, 503)
        verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=cafile) if cafile else True
        )
        with httpx.Client(trust_env=False, verify=verify, timeout=30) as c:
            assert c.get(f"{base}/data.bin").status_code == 503
            assert c.get(f"{base}/data.bin", headers={"Range": "bytes=0-3"}).content == DATA[:4]
        records = ctl.requests()
        assert [r.status for r in records] == [503, 206]
        assert records[1].range == "bytes=0-3"
    finally:
        proc.terminate()
        proc.wait(10)
        pump.join(10)
        assert proc.stdout is not None
        proc.stdout.close()
    assert proc.returncode == 0


def test_remote_stall_release(server: TestHTTPServer, client: httpx.Client) -> None:
    ctl = ControlClient(server.base_url)
    stall = ctl.stall("/data.bin", before_headers=True)
    result: list[int] = []
    t = threading.Thread(
        target=lambda: result.append(client.get(server.url("/data.bin")).status_code)
    )
    t.start()
    assert stall.wait_reached(10)
    assert server.wait_for_requests(1)
    assert server.requests_for("/data.bin", "GET")[0].status == 0
    stall.release()
    t.join(10)
    assert result == [200]


def test_stop_releases_stalls_and_idle_connections(root: Path) -> None:
    errors: list[BaseException] = []
    with serve(root) as srv:
        srv.faults.stall("/data.bin")
        idle = httpx.Client(trust_env=False, timeout=30)
        idle.get(srv.url("/empty.bin"))  # leaves a keep-alive connection open

        def fetch() -> None:
            try:
                with httpx.Client(trust_env=False, timeout=30) as c:
                    c.get(srv.url("/data.bin"))
            except httpx.HTTPError as exc:
                errors.append(exc)

        t = threading.Thread(target=fetch)
        t.start()
        assert srv.wait_for_requests(2)
    t.join(10)
    assert not t.is_alive()
    idle.close()
