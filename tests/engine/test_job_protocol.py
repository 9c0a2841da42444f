"""The job protocol: no job ends without its outcome event (issue 11, redesign item 2).

Each case below once ended ``prepare_inputs`` with no ``haul.inputs.failed`` at all: the failure
happened outside the three places that published it by hand. They run through
:func:`~worker.pipeline.protocol.execute`, the same function the Celery task runs, against a
real Redis and a real HTTP server.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.httpserver import TestHTTPServer, serve
from tests.support.servers import RedisServer
from worker.errors import DestinationError, DiskFullError, HaulError, InternalError, UnsafePathError
from worker.models import PrepareInputs, StoreOutputs
from worker.pipeline.jobs import JOBS, PREPARE_INPUTS, STORE_OUTPUTS
from worker.pipeline.protocol import Job, Outcome, execute
from worker.pipeline.runtime import Runtime
from worker.settings import load_settings


@pytest.fixture
def site(tmp_path: Path) -> Iterator[TestHTTPServer]:
    root = tmp_path / "www"
    root.mkdir()
    with serve(root) as srv:
        srv.put_file("/d/a.bin", os.urandom(3000))
        srv.put_file("/d/b.bin", os.urandom(2000))
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
    urls = [site.url("/d/a.bin"), site.url("/d/b.bin")]
    return PrepareInputs(
        execution_id=execution, project_id="p", inputs=[{"name": "x", "urls": urls}]
    )


def events(rt: Runtime, kind: str) -> list[dict[str, Any]]:
    raw = rt.redis.xrange(rt.settings.events_stream)
    found = [json.loads(fields[b"event"]) for _, fields in raw]
    return [e for e in found if e["type"] == kind]


def test_a_symlinked_execution_folder_fails_with_its_event_and_writes_nothing_there(
    site: TestHTTPServer, runtime: Runtime, tmp_path: Path
) -> None:
    """A pre-made symlink at the execution's folder: ``unsafe_path`` in ``haul.inputs.failed``,
    and nothing (no folders, no haul.log) is written where the link points."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    runtime.settings.executions_dir.mkdir(parents=True)
    (runtime.settings.executions_dir / "e1").symlink_to(elsewhere)
    with pytest.raises(UnsafePathError):
        execute(runtime, PREPARE_INPUTS, message(site, "e1"))
    [failed] = events(runtime, "haul.inputs.failed")
    assert failed["subject"] == "e1"
    assert failed["data"]["error"]["code"] == "unsafe_path"
    assert failed["data"]["project_id"] == "p"
    assert list(elsewhere.iterdir()) == []
    assert events(runtime, "haul.inputs.ready") == []


def test_a_full_disk_while_writing_haul_log_fails_with_disk_full(
    site: TestHTTPServer, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC from the system call that appends to haul.log (every other write goes through):
    the input fails as ``disk_full`` with its event, and no part file stays behind."""
    real_write = os.write

    def full_for_haul_log(fd: int, data: Any) -> int:
        if os.readlink(f"/proc/self/fd/{fd}").endswith("/haul.log"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full_for_haul_log)
    with pytest.raises(DiskFullError):
        execute(runtime, PREPARE_INPUTS, message(site, "e2"))
    [failed] = events(runtime, "haul.inputs.failed")
    assert failed["data"]["error"]["code"] == "disk_full"
    inputs = runtime.execution_dir("e2") / "inputs"
    assert not [p for p in inputs.rglob("*") if ".haul-part" in p.name]
    assert events(runtime, "haul.inputs.ready") == []


def test_an_unwritable_inputs_json_fails_with_its_event_and_leaves_no_tmp(
    site: TestHTTPServer, runtime: Runtime
) -> None:
    """A folder where ``config/inputs.json`` goes makes the final rename fail: the input fails
    with ``destination_error`` and its event, and ``inputs.json.tmp`` does not stay."""
    config = runtime.execution_dir("e3") / "config"
    (config / "inputs.json").mkdir(parents=True)
    with pytest.raises(DestinationError):
        execute(runtime, PREPARE_INPUTS, message(site, "e3"))
    [failed] = events(runtime, "haul.inputs.failed")
    assert failed["data"]["error"]["code"] == "destination_error"
    assert "inputs.json" in failed["data"]["error"]["message"]
    assert sorted(p.name for p in config.iterdir()) == ["inputs.json"]
    assert events(runtime, "haul.inputs.ready") == []


def test_an_unforeseen_exception_becomes_internal_error_with_the_jobs_failure_event(
    runtime: Runtime, tmp_path: Path
) -> None:
    """Anything that is not a haul error (here a bug: a ``KeyError`` in the run function) is
    published as ``internal_error`` through the job's own failure event, and raised as
    :class:`InternalError` (so Celery records a failure, not a success)."""

    def broken(rt: Runtime, msg: StoreOutputs, lease_lost: object) -> Outcome:
        raise KeyError("a bug")

    job = Job(task=STORE_OUTPUTS.task, model=StoreOutputs, run=broken, failed=STORE_OUTPUTS.failed)
    with pytest.raises(InternalError, match="KeyError"):
        execute(runtime, job, StoreOutputs(execution_id="e4", project_id="p"))
    [failed] = events(runtime, "haul.outputs.failed")
    assert failed["data"]["error"]["code"] == "internal_error"


def test_the_final_event_is_published_by_the_protocol_from_the_outcome(
    site: TestHTTPServer, runtime: Runtime
) -> None:
    """The run function only returns its outcome; ``execute`` publishes the final event once
    and hands back the summary."""
    summary = execute(runtime, PREPARE_INPUTS, message(site, "e5"))
    [ready] = events(runtime, "haul.inputs.ready")
    assert ready["data"]["files"] == summary["files"] == 2
    assert ready["data"]["bytes"] == summary["bytes"] == 5000
    assert events(runtime, "haul.inputs.failed") == []


def test_every_execution_job_declares_a_failure_event_and_a_lease() -> None:
    """Each contract job about an execution has a lease and, except the watch, a failure
    event; a job without one says so with ``failed=None`` (purge and the watch: the contract
    has none; a failed watch round leaves everything to store_outputs)."""
    by_task = {job.task: job for job in JOBS}
    assert len(by_task) == len(JOBS)
    for job in JOBS:
        if "execution_id" in job.model.model_fields:
            assert job.failed is not None or job.repeats, job.task
            assert job.lease_key is not None, job.task
    assert [job.task for job in JOBS if job.failed is None] == ["haul.purge", "haul.watch_outputs"]


def test_a_failure_event_that_cannot_be_published_does_not_hide_the_failure(
    runtime: Runtime, redis_private: RedisServer
) -> None:
    """Redis gone: the job's own error is still raised (as ``redis_unavailable`` when Redis is
    the cause), the lost event is logged, and nothing else escapes."""

    def needs_redis(rt: Runtime, msg: StoreOutputs, lease_lost: object) -> Outcome:
        rt.redis.ping()
        return Outcome({"status": "stored"})

    job = Job(
        task=STORE_OUTPUTS.task, model=StoreOutputs, run=needs_redis, failed=STORE_OUTPUTS.failed
    )
    redis_private.stop()
    try:
        with pytest.raises(HaulError) as caught:
            execute(runtime, job, StoreOutputs(execution_id="e6", project_id="p"))
        assert caught.value.code == "redis_unavailable"
    finally:
        redis_private.start()
