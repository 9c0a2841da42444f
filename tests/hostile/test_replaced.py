"""An output replaced while it uploads, through the real pipeline entry (the store_outputs job)
with the real local store: the moment of replacement is the store's own ``create``, which a
worker process could not time deterministically.

Whatever the program does to the file after it was hashed (rewrites it in place with other
bytes of the same size, renames another file over it, swaps in a symlink to a secret), no
content-addressed key ever holds bytes other than the ones its name and datum promise: the
output fails with ``object_changed`` and the store keeps nothing of it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.servers import RedisServer
from worker.errors import HaulError
from worker.models import StoreOutputs
from worker.pipeline.jobs import STORE_OUTPUTS
from worker.pipeline.protocol import execute
from worker.pipeline.runtime import Runtime
from worker.settings import load_settings
from worker.stores.local import TMP_DIR, LocalStore

ORIGINAL = b"the bytes that were hashed" * 1000


@pytest.fixture
def runtime(redis_private: RedisServer, tmp_path: Path) -> Iterator[Runtime]:
    settings = load_settings(
        {
            "HAUL_REDIS_URL": redis_private.url,
            "HAUL_DATA_DIR": str(tmp_path / "data"),
            "HAUL_MAX_ATTEMPTS": "2",
        }
    )
    rt = Runtime.from_settings(settings)
    yield rt
    rt.close()


class ReplacingStore(LocalStore):
    """The real local store; the program changes the file just as the store starts reading."""

    def __init__(self, base: LocalStore, replace: Callable[[Path], None]) -> None:
        super().__init__(base.name, base.root, base.prefix)
        self.replace = replace

    def create(self, key: str, path: Path, *, size: int, md5: str | None = None) -> None:
        self.replace(path)
        super().create(key, path, size=size, md5=md5)


def _in_place(path: Path) -> None:
    with path.open("r+b") as f:
        f.write(b"X" * len(ORIGINAL))  # same size, other bytes, same inode


def _renamed_over(path: Path) -> None:
    tmp = path.with_name("next")
    tmp.write_bytes(b"Y" * len(ORIGINAL))
    os.replace(tmp, path)


def _symlink_swapped(path: Path) -> None:
    secret = path.parent.parent.parent / "secret.txt"
    secret.write_bytes(b"Z" * len(ORIGINAL))
    path.unlink()
    path.symlink_to(secret)


@pytest.mark.parametrize(
    "replace", [_in_place, _renamed_over, _symlink_swapped], ids=["in-place", "renamed", "symlink"]
)
def test_an_output_replaced_while_it_uploads_is_never_stored_under_the_old_hash(
    runtime: Runtime, replace: Callable[[Path], None]
) -> None:
    """outputs.failed says object_changed; no datum, no object at a key, no temporary file."""
    eid = f"exec-{replace.__name__.strip('_')}"
    out = runtime.execution_dir(eid) / "outputs"
    out.mkdir(parents=True)
    (out / "model.bin").write_bytes(ORIGINAL)
    base = runtime.sources.store("default")
    assert isinstance(base, LocalStore)
    runtime.sources._stores["default"] = ReplacingStore(base, replace)

    with pytest.raises(HaulError):
        execute(runtime, STORE_OUTPUTS, StoreOutputs(execution_id=eid, project_id="p"))
    events = _events(runtime)
    failed = [e for e in events if e["type"] == "haul.outputs.failed"]
    assert [e["data"]["error"]["code"] for e in failed] == ["object_changed"], events
    assert not [e for e in events if e["type"] == "haul.output.stored"]
    store_files = [p for p in base.root.rglob("*") if p.is_file()]
    assert store_files == [], store_files
    assert not list((base.root / TMP_DIR).glob("*"))


def test_an_unchanged_output_is_stored_by_the_same_store(runtime: Runtime) -> None:
    """The control: the same store without a replacement stores the bytes under their hash."""
    eid = "exec-control"
    out = runtime.execution_dir(eid) / "outputs"
    out.mkdir(parents=True)
    (out / "model.bin").write_bytes(ORIGINAL)
    base = runtime.sources.store("default")
    assert isinstance(base, LocalStore)
    runtime.sources._stores["default"] = ReplacingStore(base, lambda _: None)
    summary = execute(runtime, STORE_OUTPUTS, StoreOutputs(execution_id=eid, project_id="p"))
    key = summary["datums"][0]["key"]
    assert (base.root / key).read_bytes() == ORIGINAL


def _events(rt: Runtime) -> list[dict[str, Any]]:
    raw = rt.redis.xrange(rt.settings.events_stream)
    return [json.loads(fields[b"event"]) for _, fields in raw]


def test_a_staged_copy_is_linked_or_removed_and_never_left_behind(runtime: Runtime) -> None:
    """The local store's private copy, written while the output was hashed, becomes the key's
    file (one inode, no second copy); storing the same bytes again (deduplicated) removes it."""
    base = runtime.sources.store("default")
    assert isinstance(base, LocalStore)
    keys = []
    for eid in ("exec-staged-1", "exec-staged-2"):
        out = runtime.execution_dir(eid) / "outputs"
        out.mkdir(parents=True)
        (out / "model.bin").write_bytes(ORIGINAL)
        summary = execute(runtime, STORE_OUTPUTS, StoreOutputs(execution_id=eid, project_id="p"))
        keys.append(summary["datums"][0]["key"])
        assert not list((base.root / TMP_DIR).glob("*"))  # linked, or removed
        assert not base._staged  # nothing remembered for a file that is done
    assert keys[0] == keys[1]
    assert (base.root / keys[0]).read_bytes() == ORIGINAL
    assert [e["data"]["deduplicated"] for e in _events(runtime)
            if e["type"] == "haul.output.stored"] == [False, True]  # fmt: skip
