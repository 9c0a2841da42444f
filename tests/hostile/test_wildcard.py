"""Wildcards that match very many objects: the plan's memory stays bounded.

A wildcard over 100 000 objects (a local store of 100 000 empty files) is planned in a child
process whose peak RSS is measured; more than ``max_wildcard_matches`` (default 100 000)
fails the input with ``too_many_matches`` before the listing goes on, shown here through a
real worker with a small limit.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hostile.conftest import Case, Rig, rig, served_next

OBJECTS = 100_000
#: measured 126 MB of growth for 100 000 objects (about 1.3 KB each); twice that fails
MAX_GROWTH_KIB = 256 * 1024
LIMIT = 50


def _make_files(root: Path, count: int, per_folder: int = 1000) -> None:
    for n in range(count):
        folder = root / "data" / f"d{n // per_folder:04}"
        if n % per_folder == 0:
            folder.mkdir(parents=True)
        os.close(os.open(folder / f"f{n % per_folder:04}.txt", os.O_CREAT | os.O_WRONLY, 0o644))


@pytest.fixture
def big_store(tmp_path: Path) -> Iterator[Path]:
    """100 000 empty files, in memory when /dev/shm is there (the disk is 10x slower here)."""
    shm = Path("/dev/shm")
    base = Path(
        __import__("tempfile").mkdtemp(prefix="haul-wild-", dir=shm if shm.is_dir() else tmp_path)
    )
    try:
        _make_files(base / "store", OBJECTS)
        yield base / "store"
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_a_wildcard_over_100000_objects_is_planned_in_bounded_memory(
    big_store: Path, tmp_path: Path
) -> None:
    """Every object is planned, and the planner's peak RSS grows by less than 256 MiB."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.hostile._plan_child", str(big_store), str(tmp_path / "d")],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    _, files, before, peak = done.stdout.split()
    assert int(files) == OBJECTS
    growth = int(peak) - int(before)
    print(f"planning {OBJECTS} objects: peak RSS +{growth / 1024:.0f} MiB")
    assert growth < MAX_GROWTH_KIB


@pytest.fixture(scope="module")
def r(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    lake = tmp_path_factory.mktemp("lake")
    _make_files(lake / "many", LIMIT + 1, per_folder=LIMIT + 1)
    _make_files(lake / "enough", LIMIT, per_folder=LIMIT)
    env = {
        "HAUL_STORES__LAKE__TYPE": "local",
        "HAUL_STORES__LAKE__PATH": str(lake),
        "HAUL_MAX_WILDCARD_MATCHES": str(LIMIT),
    }
    with rig(tmp_path_factory, "wildcard", extra_env=env) as it:
        it.lake = lake  # type: ignore[attr-defined]
        yield it


def test_more_matches_than_the_limit_fail_the_input(r: Rig) -> None:
    """51 matches with max_wildcard_matches = 50: too_many_matches, nothing downloaded."""
    case = Case(r)
    url = f"file://{r.lake}/many/**"  # type: ignore[attr-defined]
    state, _ = case.run(
        "haul.prepare_inputs",
        {"execution_id": case.eid, "project_id": "p", "inputs": [{"name": "x", "urls": [url]}]},
    )
    assert state == "FAILURE"
    error = case.failed()["data"]["error"]
    assert error["code"] == "too_many_matches" and "max_wildcard_matches" in error["message"]
    assert not list((case.exec_dir / "inputs").rglob("*.txt"))
    case.check_clean()
    served_next(r)


def test_as_many_matches_as_the_limit_are_fetched(r: Rig) -> None:
    """50 matches with the limit at 50: all of them land."""
    case = Case(r)
    url = f"file://{r.lake}/enough/**"  # type: ignore[attr-defined]
    state, summary = case.run(
        "haul.prepare_inputs",
        {"execution_id": case.eid, "project_id": "p", "inputs": [{"name": "x", "urls": [url]}]},
    )
    assert state == "SUCCESS" and summary["files"] == LIMIT, summary
    case.check_clean()
