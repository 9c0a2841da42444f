"""Live outputs (``haul.watch_outputs``) end to end: real workers, a real Redis, the local store.

Each test starts its own worker on its own Redis database with short watch rounds (1 s), so
every test also runs the watch across several rounds handing over to each other. Waiting is
polling with a deadline on what an orchestrator sees (events, the datum index, task results).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from celery.result import AsyncResult

from tests.integration.conftest import Haul, new_id
from tests.support.servers import RedisServer
from tests.support.worker import start_worker, worker_env

pytestmark = pytest.mark.integration

ENV = {
    "HAUL_WATCH_ROUND_S": "1",
    "HAUL_LEASE_TTL_S": "3",
    "HAUL_LEASE_RETRY_S": "1",
    "HAUL_BROKER_VISIBILITY_TIMEOUT_S": "10",
}


def _wait(cond: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.05)
    raise TimeoutError(what)


@pytest.fixture
def watch_haul(redis_private: RedisServer, tmp_path: Path) -> Iterator[Haul]:
    data_dir = tmp_path / "data"
    with start_worker(redis_private.url, data_dir, extra_env=ENV, concurrency=2) as w:
        yield Haul(redis_private.url, data_dir, w)


def _msg(eid: str, project: str = "proj") -> dict[str, str]:
    return {"execution_id": eid, "project_id": project}


def _stored(haul: Haul, eid: str, rel: str) -> dict[str, Any] | None:
    for e in haul.events(eid, "haul.output.stored"):
        if e["data"]["path"] == rel:
            return dict(e["data"])
    return None


def _done(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(0o444)


def _sample(base_url: str, name: str, labels: dict[str, str]) -> float | None:
    """One sample of the worker's /metrics (None when it is not there)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(base_url + "/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return None


def _round_result(haul: Haul, eid: str) -> Any:
    current = haul.r.get(f"haul:watch:round:{eid}")
    if current is None:
        return None
    result = AsyncResult(current, app=haul.client)
    return result.result if result.state == "SUCCESS" else None


def test_read_only_files_are_stored_live_and_not_sent_again(
    watch_haul: Haul, tmp_path: Path
) -> None:
    """chmod 0444 -> stored while the watch runs; a writable file, a symlink and a file still
    open for writing are not; a later sidecar updates the datum; store_outputs ends the watch,
    sends nothing again and counts every output."""
    haul, eid = watch_haul, new_id()
    out = haul.exec_dir(eid) / "outputs"
    out.mkdir(parents=True)
    haul.send("haul.watch_outputs", _msg(eid))

    _done(out / "ckpt" / "epoch-1.bin", b"one" * 1000)
    first = _wait(lambda: _stored(haul, eid, "ckpt/epoch-1.bin"), 20, "epoch-1 never stored")
    assert first["sha256"] == hashlib.sha256(b"one" * 1000).hexdigest()

    (out / "notes.txt").write_text("still writable")
    outside = tmp_path / "outside.bin"
    _done(outside, b"secret")
    (out / "link.bin").symlink_to(outside)
    fd = os.open(out / "open.bin", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"part 1 ")
    os.fchmod(fd, 0o444)
    _done(out / "marker.bin", b"marker")
    _wait(lambda: _stored(haul, eid, "marker.bin"), 20, "marker never stored")
    # The scan that stored the marker saw the others and left them alone.
    assert _stored(haul, eid, "notes.txt") is None and _stored(haul, eid, "link.bin") is None
    assert _stored(haul, eid, "open.bin") is None
    os.write(fd, b"part 2")
    os.close(fd)
    closed = _wait(lambda: _stored(haul, eid, "open.bin"), 20, "open.bin never stored")
    assert closed["size"] == len(b"part 1 part 2")

    (out / "ckpt" / "epoch-1.bin.metadata.json").write_text(
        json.dumps({"valohai.tags": ["late"], "valohai.alias": "latest-ckpt"})
    )
    datum_key = f"haul:datum:{first['datum_id']}"
    _wait(lambda: json.loads(haul.r.get(datum_key))["tags"] == ["late"], 20, "sidecar not applied")
    _wait(lambda: haul.events(eid, "haul.alias.moved"), 20, "alias never moved")
    stored_key = haul.data_dir / "store" / first["key"]
    before = os.stat(stored_key)

    state, summary = haul.run("haul.store_outputs", _msg(eid))
    assert state == "SUCCESS", summary
    assert summary["files"] == 4  # epoch-1, marker, open.bin and notes.txt
    by_path = {d["path"]: d for d in summary["datums"]}
    assert by_path["ckpt/epoch-1.bin"]["datum_id"] == first["datum_id"]
    assert by_path["ckpt/epoch-1.bin"]["deduplicated"] is True
    assert by_path["notes.txt"]["deduplicated"] is False
    after = os.stat(stored_key)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    ids = [e["id"] for e in haul.events(eid, "haul.output.stored")]
    per_path = {e["data"]["path"] for e in haul.events(eid, "haul.output.stored")}
    assert len(set(ids)) == len(per_path) == 4  # published again with the same ids
    assert [e["data"]["files"] for e in haul.events(eid, "haul.outputs.stored")] == [4]
    refused = {e["data"]["path"] for e in haul.events(eid, "haul.output.refused")}
    assert refused == {"link.bin"}
    ended = _wait(lambda: _round_result(haul, eid), 20, "the watch did not end")
    assert ended["status"] == "ended" and ended["reason"] == "store_outputs began"


def test_watch_ends_when_the_execution_folder_goes(watch_haul: Haul) -> None:
    """Removing the execution folder ends the watch; nothing is stored."""
    haul, eid = watch_haul, new_id()
    (haul.exec_dir(eid) / "outputs").mkdir(parents=True)
    haul.send("haul.watch_outputs", _msg(eid))
    _wait(lambda: haul.r.exists(f"haul:watch:active:{eid}"), 20, "the watch never started")
    shutil.rmtree(haul.exec_dir(eid))
    ended = _wait(lambda: _round_result(haul, eid), 20, "the watch did not end")
    assert ended == {
        "execution_id": eid,
        "project_id": "proj",
        "status": "ended",
        "reason": "the execution folder is gone",
        "stored": 0,
    }


def test_a_watch_sent_before_its_execution_folder_exists_waits_for_it(
    watch_haul: Haul,
) -> None:
    """The watch may run before prepare_inputs made the folder (other queues): it waits
    across rounds, stores what becomes done once the folder is there, and ends only when
    that folder, once seen, is removed."""
    haul, eid = watch_haul, new_id()
    haul.send("haul.watch_outputs", _msg(eid))
    _wait(lambda: haul.r.exists(f"haul:watch:active:{eid}"), 20, "the watch never started")
    first = haul.r.get(f"haul:watch:round:{eid}")
    _wait(lambda: haul.r.get(f"haul:watch:round:{eid}") != first, 20, "no second round")
    assert _round_result(haul, eid) is None  # still watching, in its second 1 s round
    _done(haul.exec_dir(eid) / "outputs" / "late.bin", b"late")
    _wait(lambda: _stored(haul, eid, "late.bin"), 20, "late.bin never stored")
    shutil.rmtree(haul.exec_dir(eid))
    ended = _wait(lambda: _round_result(haul, eid), 20, "the watch did not end")
    assert ended["reason"] == "the execution folder is gone", ended


def test_watch_ends_by_itself_after_watch_max_s(redis_private: RedisServer, tmp_path: Path) -> None:
    """``watch_max_s`` counts from the first round across the chain of rounds; a file made
    read-only after the end waits for ``store_outputs``, which counts both."""
    data_dir, eid = tmp_path / "data", new_id()
    out = data_dir / "executions" / eid / "outputs"
    out.mkdir(parents=True)
    env = {**ENV, "HAUL_WATCH_MAX_S": "3"}
    with start_worker(redis_private.url, data_dir, extra_env=env, concurrency=2) as w:
        haul = Haul(redis_private.url, data_dir, w)
        started = time.monotonic()
        haul.send("haul.watch_outputs", _msg(eid))
        _done(out / "early.bin", b"early")
        _wait(lambda: _stored(haul, eid, "early.bin"), 20, "early.bin never stored")

        def ended() -> Any:
            result = _round_result(haul, eid)
            return result if result and result["status"] == "ended" else None

        result = _wait(ended, 30, "the watch did not end by itself")
        assert result["reason"] == "watch_max_s reached"
        assert time.monotonic() - started >= 3  # several 1 s rounds, one deadline
        _done(out / "late.bin", b"late")
        assert _stored(haul, eid, "late.bin") is None
        state, summary = haul.run("haul.store_outputs", _msg(eid))
        assert state == "SUCCESS" and summary["files"] == 2, summary
        late = _stored(haul, eid, "late.bin")
        assert late is not None and late["deduplicated"] is False


def test_a_killed_watch_comes_back_and_rescans(redis_private: RedisServer, tmp_path: Path) -> None:
    """SIGKILL of the whole worker mid-watch: the redelivered round rescans and stores what
    was made read-only meanwhile; what the first worker stored is not stored again."""
    data_dir, eid = tmp_path / "data", new_id()
    out = data_dir / "executions" / eid / "outputs"
    out.mkdir(parents=True)
    with start_worker(redis_private.url, data_dir, extra_env=ENV) as first:
        haul = Haul(redis_private.url, data_dir, first)
        haul.send("haul.watch_outputs", _msg(eid))
        _done(out / "a.bin", b"a")
        _wait(lambda: _stored(haul, eid, "a.bin"), 20, "a.bin never stored")
        os.killpg(first.proc.pid, signal.SIGKILL)
        _wait(lambda: first.proc.poll() is not None, 20, "worker did not die")
    _done(out / "b.bin", b"b")
    assert _stored(haul, eid, "b.bin") is None
    with start_worker(redis_private.url, data_dir, extra_env=ENV) as second:
        haul = Haul(redis_private.url, data_dir, second)
        _wait(lambda: _stored(haul, eid, "b.bin"), 60, "b.bin never stored after the restart")
        # A kill between a.bin's event and its live record publishes that event again, with
        # the same id (contract 9, 6): a consumer de-duplicating by id sees two facts.
        stored = haul.events(eid, "haul.output.stored")
        facts = {e["id"]: e["data"]["path"] for e in stored}
        assert sorted(facts.values()) == ["a.bin", "b.bin"], stored
        state, summary = haul.run("haul.store_outputs", _msg(eid))
        assert state == "SUCCESS" and summary["files"] == 2
        assert all(d["deduplicated"] for d in summary["datums"])
    assert redis.Redis.from_url(redis_private.url).exists(f"haul:watch:stop:{eid}")


def test_haul_worker_runs_watches_in_a_pool_of_their_own(
    redis_private: RedisServer, tmp_path: Path
) -> None:
    """``haul worker`` with one prefork process: a running watch does not hold up
    store_outputs (the watch has its own threads worker); the one /metrics counts what both
    workers did (a file stored live by the watch worker, the pool's store_outputs); SIGTERM
    stops both workers and the shared metrics folder goes with them."""
    data_dir, eid = tmp_path / "data", new_id()
    out = data_dir / "executions" / eid / "outputs"
    out.mkdir(parents=True)
    env = worker_env(
        redis_private.url,
        data_dir,
        {
            **ENV,
            "HAUL_WATCH_ROUND_S": "30",
            "HAUL_SHUTDOWN_GRACE_S": "2",
            "HAUL_METRICS_BIND": "127.0.0.1:0",
        },
    )
    log = (tmp_path / "haul-worker.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "worker", "--concurrency", "1"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        text = lambda: (tmp_path / "haul-worker.log").read_text(errors="replace")  # noqa: E731
        _wait(lambda: text().count(" ready.") >= 2, 60, "both workers never became ready")
        haul = Haul(redis_private.url, data_dir, None)
        haul.send("haul.watch_outputs", _msg(eid))
        _wait(lambda: haul.r.exists(f"haul:watch:active:{eid}"), 20, "the watch never started")
        _done(out / "live.bin", b"L" * 777)
        _wait(lambda: _stored(haul, eid, "live.bin"), 20, "live.bin never stored live")
        found = re.search(r"metrics and health on (http://\S+)/metrics", text())
        assert found, text()
        base = found.group(1)
        out_local = {"direction": "out", "store_type": "local"}
        files, sent = ("haul_files_total", out_local), ("haul_transfer_bytes_total", out_local)
        # the watch worker's counts, served by the main worker
        _wait(lambda: _sample(base, *files) == 1, 10, "live.bin not counted")
        assert _sample(base, *sent) == 777
        (out / "f.txt").write_text("x")
        state, summary = haul.run("haul.store_outputs", _msg(eid), timeout=25)
        assert state == "SUCCESS" and summary["files"] == 2
        ended = {"task": "haul.watch_outputs", "outcome": "success"}
        _wait(lambda: _sample(base, "haul_task_seconds_count", ended), 20, "no watch round")
        assert _sample(base, *files) == 2  # live.bin was not sent again
        assert _sample(base, *sent) == 777 + 1
        stored = {"task": "haul.store_outputs", "outcome": "success"}
        assert _sample(base, "haul_task_seconds_count", stored) == 1
        assert len(list((data_dir / "run").glob("metrics-*"))) == 1  # one folder for both
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)  # Celery's cold-shutdown exit code, from whichever worker ended first
        assert text().count("Cold shutdown (MainProcess)") >= 2  # both workers stopped
        assert list((data_dir / "run").glob("metrics-*")) == []
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
