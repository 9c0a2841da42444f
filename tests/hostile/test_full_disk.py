"""A disk that fills up at each step of prepare_inputs: mid-download, mid-haul.log and
mid-inputs.json. haul's data folder is a 4 MiB tmpfs, whose space is counted in whole 4 KiB
pages, so a file of N pages leaves an exact number of pages for what comes after it.

Each step fails with ``disk_full`` in ``haul.inputs.failed``, leaves no part file and no
temporary file, and the worker serves the next message once the space is back.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hostile.conftest import Case, Rig, rig, served_next

PAGE = 4096
PAGES = 1024  # size=4m


@pytest.fixture(scope="module")
def small_disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path_factory.mktemp("small-disk")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={PAGES * PAGE // 1024}k", "tmpfs", str(mount)],
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


@pytest.fixture(scope="module")
def r(tmp_path_factory: pytest.TempPathFactory, small_disk: Path) -> Iterator[Rig]:
    with rig(tmp_path_factory, "full-disk", data_dir=small_disk / "data") as it:
        yield it


def _free_pages(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize // PAGE


def _run(r: Rig, case: Case, size: int) -> str:
    name = f"fill-{case.eid}.bin"
    (r.www.root / name).write_bytes(b"\xa5" * size)
    inputs = [{"name": "x", "urls": [r.www.url(name)]}]
    state, _ = case.run(
        "haul.prepare_inputs", {"execution_id": case.eid, "project_id": "p", "inputs": inputs}
    )
    assert state == "FAILURE"
    (r.www.root / name).unlink()
    return name


def _clean_up(r: Rig, case: Case) -> None:
    case.check_clean()
    shutil.rmtree(case.exec_dir)
    served_next(r)
    for old in (r.data_dir / "executions").iterdir():
        shutil.rmtree(old)


def test_a_full_disk_mid_download(r: Rig) -> None:
    """A file larger than the disk: disk_full, and neither it nor its part file stays."""
    case = Case(r)
    name = _run(r, case, (PAGES + 256) * PAGE)
    error = case.failed()["data"]["error"]
    assert error["code"] == "disk_full", error
    assert not (case.exec_dir / "inputs" / "x" / name).exists()
    _clean_up(r, case)


def test_a_full_disk_mid_haul_log(r: Rig) -> None:
    """The file takes every page left: it lands, but its haul.log lines do not fit."""
    case = Case(r)
    free = _free_pages(r.data_dir)
    _run(r, case, free * PAGE)
    error = case.failed()["data"]["error"]
    assert error["code"] == "disk_full" and "haul.log" in error["message"], error
    assert not (case.exec_dir / "config" / "inputs.json").exists()
    _clean_up(r, case)


def test_a_full_disk_mid_inputs_json(r: Rig) -> None:
    """One page is left after the file, which haul.log takes: inputs.json cannot be written,
    and neither it nor its temporary file is left."""
    case = Case(r)
    free = _free_pages(r.data_dir)
    name = _run(r, case, (free - 1) * PAGE)
    error = case.failed()["data"]["error"]
    assert error["code"] == "disk_full" and "inputs.json" in error["message"], error
    assert (case.exec_dir / "inputs" / "x" / name).stat().st_size == (free - 1) * PAGE
    assert not list((case.exec_dir / "config").iterdir())
    _clean_up(r, case)
