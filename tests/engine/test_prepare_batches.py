"""prepare_inputs batches its bookkeeping: the facts, their order and their uniqueness hold."""

from __future__ import annotations

import errno
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.support.httpserver import TestHTTPServer, serve
from tests.support.servers import RedisServer
from worker.errors import DiskFullError
from worker.models import PrepareInputs
from worker.pipeline import recording
from worker.pipeline.jobs import PREPARE_INPUTS
from worker.pipeline.protocol import execute
from worker.pipeline.runtime import Runtime
from worker.records import finished
from worker.records.haul_log import HaulLog
from worker.settings import load_settings


@pytest.fixture
def site(tmp_path: Path) -> Iterator[TestHTTPServer]:
    root = tmp_path / "www"
    root.mkdir()
    with serve(root) as srv:
        for i in range(8):
            srv.put_file(f"/d/f{i}.bin", os.urandom(500 + i))
        yield srv


@pytest.fixture
def runtime(redis_private: RedisServer, tmp_path: Path) -> Iterator[Runtime]:
    settings = load_settings(
        {
            "HAUL_REDIS_URL": redis_private.url,
            "HAUL_DATA_DIR": str(tmp_path / "data"),
            "HAUL_ALLOW_PRIVATE_ADDRESSES": "true",
            "HAUL_CACHE_ENABLED": "false",
        }
    )
    rt = Runtime.from_settings(settings)
    yield rt
    rt.close()


def message(site: TestHTTPServer, execution: str) -> PrepareInputs:
    urls = [site.url(f"/d/f{i}.bin") for i in range(8)]
    return PrepareInputs(
        execution_id=execution, project_id="p", inputs=[{"name": "x", "urls": urls}]
    )


def events(rt: Runtime) -> list[dict[str, Any]]:
    raw = rt.redis.xrange(rt.settings.events_stream)
    return [json.loads(fields[b"event"]) for _, fields in raw]


def test_small_chunks_keep_one_line_per_fact_and_the_event_order(
    site: TestHTTPServer, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recording, "_RECORD_CHUNK", 3)  # 8 files: chunks of 3, 3, 2
    monkeypatch.setattr(finished, "_BATCH", 3)
    first = execute(runtime, PREPARE_INPUTS, message(site, "e1"))
    assert first["files"] == 8
    log_path = runtime.execution_dir("e1") / "haul.log"
    lines = log_path.read_text().splitlines()
    assert len(lines) == 8 * 4
    assert [ln.split(" ")[1].rstrip(":") for ln in lines[::4]] == [
        f"/valohai/inputs/x/f{i}.bin" for i in range(8)
    ]
    downloaded = [e for e in events(runtime) if e["type"] == "haul.input.downloaded"]
    assert [e["data"]["path"] for e in downloaded] == [
        f"/valohai/inputs/x/f{i}.bin" for i in range(8)
    ]
    assert len(runtime.redis.hkeys("haul:inputs:files:e1")) == 8

    # A redelivery reuses every file and writes no line twice; its events repeat the ids.
    again = execute(runtime, PREPARE_INPUTS, message(site, "e1"))
    assert again["files"] == 8
    assert log_path.read_text().splitlines() == lines
    repeated = [e for e in events(runtime) if e["type"] == "haul.input.downloaded"][8:]
    assert [e["id"] for e in repeated] == [e["id"] for e in downloaded]
    assert all(e["data"]["cached"] for e in repeated)


def test_a_change_warning_follows_its_file_in_a_chunk(
    site: TestHTTPServer, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recording, "_RECORD_CHUNK", 3)
    execute(runtime, PREPARE_INPUTS, message(site, "e1"))
    site.put_file("/d/f4.bin", b"replaced")
    result = execute(runtime, PREPARE_INPUTS, message(site, "e2"))
    assert [c["path"] for c in result["changed"]] == ["/valohai/inputs/x/f4.bin"]
    all_events = events(runtime)
    first_ready = next(i for i, e in enumerate(all_events) if e["type"] == "haul.inputs.ready")
    second = [(e["type"], e["data"].get("path")) for e in all_events[first_ready + 1 :]]
    at = second.index(("haul.input.downloaded", "/valohai/inputs/x/f4.bin"))
    assert second[at + 1][0] == "haul.input.changed"
    assert [t for t, _ in second].count("haul.input.changed") == 1
    lines = (runtime.execution_dir("e2") / "haul.log").read_text().splitlines()
    warning = [i for i, ln in enumerate(lines) if ": warning: " in ln]
    assert len(warning) == 1 and "f4.bin: warning: content of" in lines[warning[0]]
    assert "f4.bin: sha256 sum:" in lines[warning[0] - 1]


def test_a_redis_error_keeps_finished_records_for_the_next_flush(
    site: TestHTTPServer, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = finished.FinishedFiles(runtime.redis, "e3")
    calls = {"n": 0}
    real_pipeline = runtime.redis.pipeline

    def flaky(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RedisConnectionError("Redis went away")
        return real_pipeline(*args, **kwargs)

    monkeypatch.setattr(runtime.redis, "pipeline", flaky)
    job._buffer = {"x/a": "{}", "x/b": "{}"}
    job.flush()  # logged, not raised
    assert runtime.redis.hlen("haul:inputs:files:e3") == 0
    job.flush()
    assert sorted(runtime.redis.hkeys("haul:inputs:files:e3")) == [b"x/a", b"x/b"]


def test_nothing_is_recorded_once_the_transfers_were_stopped(
    site: TestHTTPServer, runtime: Runtime
) -> None:
    job = finished.FinishedFiles(runtime.redis, "e4", threading.Event())
    job._buffer = {"x/a": "{}"}
    assert job.stopped is not None
    job.stopped.set()
    job.flush()
    assert runtime.redis.hlen("haul:inputs:files:e4") == 0


def test_haul_log_appends_every_byte_or_says_the_disk_is_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = os.write

    def short(fd: int, data: Any) -> int:
        return real_write(fd, bytes(data)[:7])  # a nearly full disk: short writes

    log = HaulLog(tmp_path / "haul.log")
    monkeypatch.setattr(os, "write", short)
    log.write([f"12:00:00 /p/f{i}: fact" for i in range(50)])
    monkeypatch.setattr(os, "write", real_write)
    assert (tmp_path / "haul.log").read_text().splitlines() == [
        f"12:00:00 /p/f{i}: fact" for i in range(50)
    ]

    def full(fd: int, data: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(DiskFullError):
        log.write(["12:00:00 /p/g: fact"])
