"""The parted-upload skeleton that S3 multipart, Azure blocks and Swift segments share.

The backends' real uploads run in the contract suite against their servers; these tests pin the
skeleton's own promises with recording hooks: parts are the file's bytes, commit gets them in
order, any failure aborts with exactly the parts that arrived and commits nothing.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from worker.errors import IntegrityError, TransientError
from worker.stores._parted import Part, plan_parts, upload_parts


def _file(tmp_path: Path, size: int) -> tuple[Path, bytes]:
    data = os.urandom(size)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    return path, data


def test_plan_covers_the_file_within_the_part_limit() -> None:
    """Parts tile the file exactly, and grow when the service's part count limit needs it."""
    parts = plan_parts(10, 4, 100)
    assert [(p.number, p.offset, p.length) for p in parts] == [(1, 0, 4), (2, 4, 4), (3, 8, 2)]
    wide = plan_parts(1000, 1, 10)
    assert len(wide) == 10 and sum(p.length for p in wide) == 1000


def test_parts_are_the_file_and_commit_gets_them_in_order(tmp_path: Path) -> None:
    """Each part's bytes are the file's at its offset; commit sees every receipt in part order
    even though the parts finished in another order; abort is not called."""
    path, data = _file(tmp_path, 100)
    got: dict[int, bytes] = {}
    committed: list[list[int]] = []
    release = threading.Event()

    def send(part: Part, chunk: bytes) -> int:
        if part.number == 1:
            release.wait(5)  # the first part finishes last
        got[part.number] = chunk
        if part.number == 4:
            release.set()
        return part.number * 10

    upload_parts(
        path, plan_parts(100, 30, 100), send=send,
        commit=lambda sent: committed.append([r for _, r in sent]),
        abort=lambda sent: pytest.fail("aborted"), concurrency=4, what="x",
    )  # fmt: skip
    assert committed == [[10, 20, 30, 40]]
    assert b"".join(got[n] for n in sorted(got)) == data


def test_a_failed_part_aborts_with_the_parts_that_arrived(tmp_path: Path) -> None:
    """The first failure stops the upload: no later part starts, commit never runs, and abort
    gets exactly the parts that did arrive; the error goes up unchanged."""
    path, _ = _file(tmp_path, 100)
    started: list[int] = []
    aborted: list[list[int]] = []

    def send(part: Part, chunk: bytes) -> int:
        started.append(part.number)
        if part.number == 2:
            raise TransientError("503")
        return part.number

    with pytest.raises(TransientError):
        upload_parts(
            path, plan_parts(100, 10, 100), send=send,
            commit=lambda sent: pytest.fail("committed"),
            abort=lambda sent: aborted.append([p.number for p, _ in sent]),
            concurrency=1, what="x",
        )  # fmt: skip
    assert started == [1, 2]
    assert aborted == [[1]]


def test_a_failed_commit_aborts_everything(tmp_path: Path) -> None:
    """A commit that fails (a taken key, a 5xx) aborts with every sent part."""
    path, _ = _file(tmp_path, 50)
    aborted: list[int] = []

    def commit(sent: list[tuple[Part, int]]) -> None:
        raise TransientError("500")

    with pytest.raises(TransientError):
        upload_parts(
            path, plan_parts(50, 20, 100), send=lambda p, c: p.number, commit=commit,
            abort=lambda sent: aborted.extend(p.number for p, _ in sent), concurrency=2, what="x",
        )  # fmt: skip
    assert aborted == [1, 2, 3]


def test_a_file_that_shrinks_while_it_uploads_is_an_integrity_error(tmp_path: Path) -> None:
    """A part shorter than planned (the file changed under the upload) fails and aborts."""
    path, _ = _file(tmp_path, 100)
    parts = plan_parts(100, 40, 100)
    path.write_bytes(b"short")
    aborted: list[bool] = []
    with pytest.raises(IntegrityError, match="changed size"):
        upload_parts(
            path, parts, send=lambda p, c: p.number, commit=lambda sent: None,
            abort=lambda sent: aborted.append(True), concurrency=2, what="x",
        )  # fmt: skip
    assert aborted == [True]
