"""The small-object lane's connections outlive a batch, within one process only."""

from __future__ import annotations

import os
from pathlib import Path

from tests.support.httpserver import TestHTTPServer
from worker.stores.base import SmallObject
from worker.stores.http import HttpSource

LIMIT = 64 * 1024


def fetch(http: HttpSource, url: str) -> bytes:
    """One lane batch of ``url``; the body the lane delivered (the test fails on a fallback)."""
    got: list[bytes] = []

    def deliver(index: int, answer: object) -> None:
        assert isinstance(answer, SmallObject), f"the lane handed the request back: {answer}"
        got.append(answer.body)

    http.fetch_small([url], LIMIT, deliver, max_connections=4)
    assert len(got) == 1
    return got[0]


def ports(server: TestHTTPServer, path: str) -> list[int]:
    return [r.client_port for r in server.requests_for(path, "GET")]


def test_a_second_batch_reuses_the_first_batchs_connection(
    server: TestHTTPServer, http: HttpSource
) -> None:
    server.put_file("/a.bin", b"a" * 1000)
    for _ in range(3):
        assert fetch(http, server.url("/a.bin")) == b"a" * 1000
    assert len(ports(server, "/a.bin")) == 3
    assert len(set(ports(server, "/a.bin"))) == 1


def test_a_connection_the_server_closed_while_idle_is_not_reused(
    www: Path, http: HttpSource
) -> None:
    first = TestHTTPServer(www).start()
    port = first.port
    first.put_file("/a.bin", b"x" * 500)
    try:
        assert fetch(http, first.url("/a.bin")) == b"x" * 500
        old = ports(first, "/a.bin")
    finally:
        first.stop()  # closes its side of the kept connection
    second = TestHTTPServer(www, port=port).start()
    try:
        assert fetch(http, second.url("/a.bin")) == b"x" * 500
        assert len(ports(second, "/a.bin")) == 1
        assert ports(second, "/a.bin") != old
    finally:
        second.stop()


def test_a_forked_process_opens_its_own_connection(
    server: TestHTTPServer, http: HttpSource
) -> None:
    server.put_file("/a.bin", b"p" * 700)
    assert fetch(http, server.url("/a.bin")) == b"p" * 700
    (parent_port,) = ports(server, "/a.bin")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: one batch through the inherited source, then out
        code = 1
        try:
            code = 0 if fetch(http, server.url("/a.bin")) == b"p" * 700 else 2
        finally:
            os.write(write_end, bytes([code]))
            os._exit(0)
    os.close(write_end)
    status = os.read(read_end, 1)
    os.close(read_end)
    os.waitpid(pid, 0)
    assert status == b"\x00"
    # The parent's connection is still the parent's, and still works.
    assert fetch(http, server.url("/a.bin")) == b"p" * 700
    got = ports(server, "/a.bin")
    assert len(got) == 3
    assert got[1] != parent_port
    assert got[2] == parent_port
