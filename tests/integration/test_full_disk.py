"""A full disk fails the input or output with a clear code and leaves nothing partial behind."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.integration.conftest import Haul, new_id
from tests.support.httpserver import TestHTTPServer
from tests.support.worker import start_worker

MiB = 1024 * 1024


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs (needs root; CI runs as root, elsewhere the test is skipped)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_fails_inputs_and_outputs_cleanly(
    redis_srv: Any, small_disk: Path, www: TestHTTPServer
) -> None:
    (Path(www.root) / "huge.bin").write_bytes(os.urandom(6 * MiB))
    (Path(www.root) / "tiny.bin").write_bytes(b"fits")
    url = redis_srv.url.rsplit("/", 1)[0] + "/5"
    redis.Redis.from_url(url).flushdb()
    data_dir = small_disk / "data"
    env = {"HAUL_ALLOW_PRIVATE_ADDRESSES": "true", "HAUL_CACHE_ENABLED": "false"}
    with start_worker(url, data_dir, extra_env=env) as w:
        haul = Haul(url, data_dir, w)
        eid = new_id()
        state, _ = haul.run(
            "haul.prepare_inputs",
            {
                "execution_id": eid,
                "project_id": "p",
                "inputs": [{"name": "x", "urls": [www.url("/tiny.bin"), www.url("/huge.bin")]}],
            },
        )
        assert state == "FAILURE"
        error = haul.events(eid, "haul.inputs.failed")[0]["data"]["error"]
        assert error["code"] == "disk_full"
        assert "space" in error["message"]
        folder = haul.exec_dir(eid) / "inputs" / "x"
        assert not [p for p in folder.iterdir() if ".haul-part" in p.name]
        assert not (folder / "huge.bin").exists()

        # Outputs: the embedded store lives on the same full disk.
        eid = new_id()
        out = haul.exec_dir(eid) / "outputs"
        out.mkdir(parents=True)
        (out / "model.bin").write_bytes(b"\0" * (2 * MiB + 512 * 1024))
        state, _ = haul.run("haul.store_outputs", {"execution_id": eid, "project_id": "p"})
        assert state == "FAILURE"
        error = haul.events(eid, "haul.outputs.failed")[0]["data"]["error"]
        assert error["code"] == "disk_full"
        store = data_dir / "store"
        assert not [p for p in store.rglob("*") if p.is_file() and "data" in p.parts]
        assert not list((store / ".haul-tmp").glob("*"))
        assert w.proc.poll() is None  # the worker carries on
