"""Downloads in a separate process: resume after SIGKILL, and the memory bound."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.engine.conftest import digests_of, leftovers
from tests.support.httpserver import RequestRecord, TestHTTPServer
from worker.stores.http import HttpSource
from worker.transfer.config import TransferConfig
from worker.transfer.download import download

ROOT = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024


def spawn(url: str, dest: Path, chunk: int, concurrency: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.engine._child", url, str(dest), str(chunk), str(concurrency)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def poll_until(check: object, proc: subprocess.Popen[str], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if proc.poll() is not None:
            raise AssertionError(f"child exited early: {proc.communicate()}")
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        threading.Event().wait(0.01)


def recorded_chunks(record: Path) -> set[int]:
    try:
        data = json.loads(record.read_text())
    except (OSError, ValueError):
        return set()
    return {i for first, end in data["done"] for i in range(first, end)}


def test_resume_after_sigkill_fetches_only_missing_chunks(
    server: TestHTTPServer, www: Path, tmp_path: Path
) -> None:
    """A killed download leaves part + record; the next run fetches only what is missing."""
    chunk = 256 * 1024
    size = 48 * chunk
    data_path = www / "big.bin"
    with data_path.open("wb") as fh:  # sparse, with distinct bytes at both ends
        fh.write(os.urandom(3 * chunk))
        fh.seek(size - chunk)
        fh.write(os.urandom(chunk))
    content = data_path.read_bytes()
    stall_at = 24 * chunk
    release = threading.Event()

    def stall(rec: RequestRecord) -> None:
        if rec.range_start == stall_at:
            release.wait(60)

    server.faults.on_request(stall, "/big.bin")
    dest = tmp_path / "big.bin"
    record = tmp_path / "big.bin.haul-part.json"
    proc = spawn(server.url("/big.bin"), dest, chunk, 2)
    try:
        # The writer is in order: chunks 0..23 get written and recorded, then it waits.
        poll_until(lambda: len(recorded_chunks(record)) >= 20, proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        release.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    left = set(leftovers(tmp_path))
    # A kill while the record was being rewritten may also leave its temporary file.
    assert {"big.bin.haul-part", "big.bin.haul-part.json"} <= left
    assert left <= {"big.bin.haul-part", "big.bin.haul-part.json", "big.bin.haul-part.json.tmp"}
    kept = recorded_chunks(record)
    assert kept >= set(range(20))

    server.faults.clear()
    server.reset()
    cfg = TransferConfig(chunk_size_bytes=chunk, concurrency=2, multipart_threshold_bytes=chunk)
    with HttpSource(allow_private=True) as source:
        got = download(source, server.url("/big.bin"), dest, cfg)
    assert got.digests == digests_of(content)
    assert got.resumed_bytes == len(kept) * chunk
    fetched = {
        r.range_start // chunk
        for r in server.requests_for("/big.bin", "GET")
        if r.range != "bytes=0-0" and r.range_start is not None
    }
    assert fetched == set(range(48)) - kept
    assert leftovers(tmp_path) == []


def test_changed_version_does_not_resume(server: TestHTTPServer, www: Path, tmp_path: Path) -> None:
    """A record for another version is ignored: the download starts over, right bytes."""
    chunk = 64 * 1024
    content = os.urandom(8 * chunk)
    server.put_file("/f.bin", content)
    dest = tmp_path / "f.bin"
    (tmp_path / "f.bin.haul-part").write_bytes(b"\0" * len(content))
    (tmp_path / "f.bin.haul-part.json").write_text(
        json.dumps(
            {
                "format": 1,
                "version": '"old"',
                "size": len(content),
                "chunk_size_bytes": chunk,
                "done": [[0, 8]],
                "boot_id": "",
            }
        )
    )
    cfg = TransferConfig(chunk_size_bytes=chunk, concurrency=2, multipart_threshold_bytes=chunk)
    with HttpSource(allow_private=True) as source:
        got = download(source, server.url("/f.bin"), dest, cfg)
    assert got.resumed_bytes == 0
    assert dest.read_bytes() == content
    assert leftovers(tmp_path) == []


def test_memory_stays_bounded_for_a_large_file(
    server: TestHTTPServer, www: Path, tmp_path: Path
) -> None:
    """RSS of a process downloading 384 MiB with 8 MiB chunks stays far below the file size.

    A correctness bound (buffers are recycled, nothing accumulates), not a speed assertion.
    """
    size = 384 * MiB
    with (www / "huge.bin").open("wb") as fh:
        fh.write(b"head")
        fh.truncate(size)
    proc = spawn(server.url("/huge.bin"), tmp_path / "huge.bin", 8 * MiB, 8)
    peak_kib = 0
    status = Path(f"/proc/{proc.pid}/status")
    while proc.poll() is None:
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmRSS:"):
                    peak_kib = max(peak_kib, int(line.split()[1]))
        except (OSError, ValueError):
            pass
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(0.02)  # the sampling interval; returns at once when the child exits
    out, err = proc.communicate()
    assert proc.returncode == 0, err
    _, md5, maxrss = out.split()
    expected = hashlib.md5()
    with (www / "huge.bin").open("rb") as fh:
        while block := fh.read(8 * MiB):
            expected.update(block)
    assert md5 == expected.hexdigest()
    assert max(peak_kib, int(maxrss)) < 200 * 1024, f"peak RSS {max(peak_kib, int(maxrss))} KiB"
