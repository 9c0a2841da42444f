"""Progress for people: bars on a terminal (a real pty), nothing of them in a pipe."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cli.test_cli import haul_cmd
from tests.support.httpserver import TestHTTPServer, serve
from tests.support.worker import start_worker, worker_env

MiB = 1024 * 1024
BAR = "━"  # rich's bar glyph
ENV = {"HAUL_ALLOW_PRIVATE_ADDRESSES": "true"}


@pytest.fixture
def www(tmp_path: Path) -> Iterator[TestHTTPServer]:
    root = tmp_path / "www"
    root.mkdir()
    (root / "big.bin").write_bytes(os.urandom(3 * MiB))
    (root / "small.txt").write_bytes(b"small\n")
    with serve(root) as srv:
        srv.faults.throttle("/big.bin", 2 * MiB)  # ~1.5 s: several progress reports
        yield srv


def _in_pty(cmd: list[str], env: dict[str, str], timeout_s: float = 90) -> tuple[int, str]:
    """Run ``cmd`` with stdout and stderr on a pseudo-terminal; everything it drew."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
    os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    return code, out.decode(errors="replace")


def _fetch_env(tmp_path: Path) -> dict[str, str]:
    # Wide enough for a bar labelled with a long tmp path (pytest-xdist adds popen-gw<N>/):
    # in 120 columns rich wrapped "3.1/3.1 MB" onto two lines.
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAUL_")}
    return {**env, **ENV, "HAUL_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "240"}


def test_fetch_on_a_terminal_draws_a_bar_per_large_file_and_a_total(
    www: TestHTTPServer, tmp_path: Path
) -> None:
    """A pty gets a bar for the large file and a total with bytes, rate and file count; the
    seed-format lines are still printed."""
    to = tmp_path / "out"
    cmd = haul_cmd("fetch", www.url("/big.bin"), www.url("/small.txt"), "--to", str(to))
    code, drawn = _in_pty(cmd, _fetch_env(tmp_path))
    assert code == 0, drawn
    assert BAR in drawn and "\x1b[" in drawn
    assert f"{to / 'big.bin'} " in drawn  # the large file's own bar, by its path
    assert "total (2/2 files)" in drawn
    assert "3.1/3.1 MB" in drawn and "/s" in drawn
    assert "big.bin: sha256 sum:" in drawn.replace("\r\n", "\n")


def test_fetch_in_a_pipe_or_quiet_draws_nothing(www: TestHTTPServer, tmp_path: Path) -> None:
    """Not a terminal: plain lines only, no escape codes; --quiet does the same on a pty."""
    to = tmp_path / "out"
    urls = [www.url("/big.bin"), www.url("/small.txt")]
    piped = subprocess.run(
        haul_cmd("fetch", *urls, "--to", str(to)),
        env=_fetch_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert piped.returncode == 0, piped.stderr
    assert piped.stderr == ""
    assert BAR not in piped.stdout and "\x1b[" not in piped.stdout
    assert "big.bin: sha256 sum:" in piped.stdout
    code, drawn = _in_pty(
        haul_cmd("fetch", *urls, "--to", str(tmp_path / "q"), "--quiet"), _fetch_env(tmp_path)
    )
    assert code == 0, drawn
    assert BAR not in drawn and "total (" not in drawn
    assert "small.txt: md5 sum:" in drawn


def test_submit_wait_on_a_terminal_shows_the_execution_progress(
    redis_srv: Any, www: TestHTTPServer, tmp_path: Path
) -> None:
    """`haul submit inputs --wait` on a pty turns the worker's haul.transfer.progress events
    into a bar for the file, and still prints the events and exits 0."""
    url = redis_srv.url_for_db(12)
    data_dir = tmp_path / "data"
    worker = {**ENV, "HAUL_PROGRESS_INTERVAL_S": "0.2"}
    execution = f"exec-{uuid.uuid4().hex[:8]}"
    with start_worker(url, data_dir, worker):
        env = {**worker_env(url, data_dir, ENV), "COLUMNS": "240"}
        cmd = haul_cmd(
            "submit", "inputs", "--execution", execution, "--project", "p",
            "--input", f"x={www.url('/big.bin')}", "--wait", "--timeout", "60",
        )  # fmt: skip
        code, drawn = _in_pty(cmd, env)
    assert code == 0, drawn
    assert BAR in drawn and "/valohai/inputs/x/big.bin " in drawn
    assert "total (1 files)" in drawn or "total (1/" in drawn
    assert f"inputs.ready {execution}" in drawn
    assert "transfer.progress" not in drawn  # those became the bar, not lines
