"""``haul fetch`` ends its process without the interpreter's teardown: nothing it printed or
wrote may be lost on the way, into a pipe, a file or a reader that went away."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli.test_cli import haul_cmd
from tests.support.httpserver import serve
from worker.cli.fetch import _http_name

COUNT = 300


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAUL_")}
    return {**env, "HAUL_ALLOW_PRIVATE_ADDRESSES": "true", "HAUL_DATA_DIR": str(tmp_path / "d")}


@pytest.fixture
def site(tmp_path: Path) -> dict[str, bytes]:
    root = tmp_path / "www"
    root.mkdir()
    files = {f"f{i:04d}.bin": os.urandom(100 + i) for i in range(COUNT)}
    for name, body in files.items():
        (root / name).write_bytes(body)
    return files


def test_every_line_and_file_survives_the_quick_exit(
    site: dict[str, bytes], tmp_path: Path
) -> None:
    """300 files into a pipe and a file: four lines each, in the seed format, every file whole."""
    to = tmp_path / "out"
    log = tmp_path / "stdout.txt"
    with serve(tmp_path / "www") as srv, log.open("w") as out:
        urls = [srv.url(f"/{name}") for name in site]
        proc = subprocess.run(
            haul_cmd("fetch", *urls, "--to", str(to)),
            env=_env(tmp_path), stdout=out, stderr=subprocess.PIPE, text=True, timeout=120,
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    lines = log.read_text().splitlines()
    assert len(lines) == 4 * COUNT
    for name, body in site.items():
        assert (to / name).read_bytes() == body
        sha = hashlib.sha256(body).hexdigest()
        assert any(line.endswith(f"{to / name}: sha256 sum: {sha}") for line in lines), name


def test_a_reader_that_goes_away_ends_it_quietly(site: dict[str, bytes], tmp_path: Path) -> None:
    """`haul fetch ... | head -1` stops the fetch, as a closed pipe stops any Unix command:
    quietly, exit 0, and every file it left is whole under its final name (no part files)."""
    to = tmp_path / "out"
    with serve(tmp_path / "www") as srv:
        urls = [srv.url(f"/{name}") for name in site]
        proc = subprocess.Popen(
            haul_cmd("fetch", *urls, "--to", str(to)),
            env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdout is not None and proc.stderr is not None
        first = proc.stdout.readline()
        proc.stdout.close()  # the reader is done after one line
        err = proc.stderr.read().decode()
        code = proc.wait(timeout=120)
    assert b"downloaded" in first
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert code == 0, err
    left = sorted(p.name for p in to.iterdir()) if to.exists() else []
    assert set(left) <= set(site), left
    for name in left:
        assert (to / name).read_bytes() == site[name], name


def test_fetch_keeps_no_metrics() -> None:
    """Nothing serves metrics in ``haul fetch``: prometheus_client is never imported there."""
    code = (
        "import sys\n"
        "from worker.observability import metrics\n"
        "metrics.discard()\n"
        "metrics.cache_miss(); metrics.cache_hit(); metrics.transferred('in', 'x', 5)\n"
        "metrics.task_started('t'); metrics.task_finished('t', 'success', 1.0)\n"
        "metrics.retry('s3'); metrics.checksum_mismatch('s3'); metrics.input_changed()\n"
        "assert 'prometheus_client' not in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("http://h/a/train-labels.gz", "train-labels.gz"),
        ("http://h/a/b/", "b"),
        ("http://h/x.bin?sig=1", "x.bin"),
        ("http://h/na%20me.txt", "na me.txt"),
        ("http://h/", "download"),
        ("http://h", "download"),
        ("http://h/a/..", "download"),
        ("http://h/a/.", "download"),
        ("http://h/%2e%2e", "download"),
        ("http://h/a%2Fb", "download"),  # an encoded slash names no folder
        ("http://h/a%00b", "download"),
    ],
)
def test_a_web_file_is_named_after_its_last_path_segment(url: str, name: str) -> None:
    assert _http_name(url) == name
