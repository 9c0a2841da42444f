"""A worker that dies or is stopped mid-download: the message comes back, nothing partial shows."""

from __future__ import annotations

import hashlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.integration.conftest import Haul, new_id
from tests.support.fixtures import broker_for
from tests.support.httpserver import TestHTTPServer, serve
from tests.support.worker import start_worker

MiB = 1024 * 1024


@pytest.fixture
def slow_www(tmp_path: Path) -> Iterator[tuple[TestHTTPServer, bytes]]:
    data = os.urandom(6 * MiB)
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "big.bin").write_bytes(data)
    with serve(tmp_path / "www") as srv:
        srv.faults.throttle("/big.bin", 512 * 1024)
        yield srv, data


def _wait(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise TimeoutError(what)


def _visible_files(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in folder.rglob("*") if p.is_file()}


def _run_interrupted(
    redis_srv: Any,
    tmp_path: Path,
    slow: tuple[TestHTTPServer, bytes],
    db: int,
    env: dict[str, str],
    sig: int,
    broker: str = "redis",
) -> tuple[Haul, str, float]:
    url = redis_srv.url.rsplit("/", 1)[0] + f"/{db}"
    with broker_for(broker, redis_srv, db) as broker_url:
        return _interrupted(url, broker_url, tmp_path, slow, env, sig)


def _interrupted(
    url: str,
    broker_url: str,
    tmp_path: Path,
    slow: tuple[TestHTTPServer, bytes],
    env: dict[str, str],
    sig: int,
) -> tuple[Haul, str, float]:
    www, data = slow
    redis.Redis.from_url(url).flushdb()
    data_dir = tmp_path / "data"
    base_env = {
        "HAUL_ALLOW_PRIVATE_ADDRESSES": "true",
        "HAUL_LEASE_TTL_S": "3",
        "HAUL_LEASE_RETRY_S": "1",
        **env,
    }
    eid = new_id()
    folder = data_dir / "executions" / eid / "inputs" / "x"
    with start_worker(url, data_dir, extra_env=base_env, broker_url=broker_url) as first:
        haul = Haul(url, data_dir, first, broker_url)
        haul.send(
            "haul.prepare_inputs",
            {
                "execution_id": eid,
                "project_id": "p",
                "inputs": [{"name": "x", "urls": [www.url("/big.bin")]}],
            },
        )
        _wait(lambda: www.bytes_sent > MiB, 30, "download never started")
        assert "big.bin" not in _visible_files(folder)
        if sig == signal.SIGKILL:
            os.killpg(first.proc.pid, sig)  # the whole node dies: main process and pool
        else:
            first.kill(sig)  # what Kubernetes and systemd signal: the main process
        stopped_at = time.monotonic()
        _wait(lambda: first.proc.poll() is not None, 60, "worker did not stop")
        stopped_after = time.monotonic() - stopped_at
        first_log = first.log_tail(60)
    assert "big.bin" not in _visible_files(folder), first_log
    www.faults.clear()
    with start_worker(url, data_dir, extra_env=base_env, broker_url=broker_url) as second:
        haul = Haul(url, data_dir, second, broker_url)
        _wait(
            lambda: haul.events(eid, "haul.inputs.ready"),
            90,
            f"inputs never became ready; log:\n{haul.log_tail()}",
        )
    got = folder / "big.bin"
    assert hashlib.sha256(got.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
    assert not [p for p in folder.iterdir() if ".haul-part" in p.name]
    ready = haul.events(eid, "haul.inputs.ready")
    assert len({e["id"] for e in ready}) == 1
    return haul, eid, stopped_after


def test_sigkill_mid_download_is_redelivered_and_completes(
    redis_srv: Any, tmp_path: Path, slow_www: tuple[TestHTTPServer, bytes], broker_kind: str
) -> None:
    """SIGKILL: the unacked message returns (Redis: after the visibility timeout; RabbitMQ:
    when the dead worker's connection closes); the input completes."""
    _run_interrupted(
        redis_srv,
        tmp_path,
        slow_www,
        3,
        {"HAUL_BROKER_VISIBILITY_TIMEOUT_S": "10"},
        signal.SIGKILL,
        broker_kind,
    )


def test_sigterm_requeues_promptly(
    redis_srv: Any, tmp_path: Path, slow_www: tuple[TestHTTPServer, bytes], broker_kind: str
) -> None:
    """SIGTERM: a soft shutdown gives the task a grace period, then requeues it at once
    (long before the 300 s visibility timeout would)."""
    _, _, stopped_after = _run_interrupted(
        redis_srv,
        tmp_path,
        slow_www,
        4,
        {"HAUL_SHUTDOWN_GRACE_S": "1"},
        signal.SIGTERM,
        broker_kind,
    )
    assert stopped_after < 10


def test_a_worker_that_loses_its_lease_stops_quietly(
    redis_srv: Any, tmp_path: Path, slow_www: tuple[TestHTTPServer, bytes]
) -> None:
    """Another worker took the execution over (the lease key holds its token now): this copy
    stops its transfers within a heartbeat, publishes no outcome, and keeps its part file."""
    www, _data = slow_www
    url = redis_srv.url.rsplit("/", 1)[0] + "/6"
    client = redis.Redis.from_url(url)
    client.flushdb()
    data_dir = tmp_path / "data"
    env = {"HAUL_ALLOW_PRIVATE_ADDRESSES": "true", "HAUL_LEASE_TTL_S": "3"}
    eid = new_id()
    with start_worker(url, data_dir, extra_env=env) as w:
        haul = Haul(url, data_dir, w)
        result = haul.send(
            "haul.prepare_inputs",
            {
                "execution_id": eid,
                "project_id": "p",
                "inputs": [{"name": "x", "urls": [www.url("/big.bin")]}],
            },
        )
        _wait(lambda: www.bytes_sent > MiB, 30, "download never started")
        client.set(f"haul:lease:haul.prepare_inputs:{eid}", "someone-else", px=60_000)
        _wait(lambda: result.state == "FAILURE", 30, f"never stopped:\n{haul.log_tail()}")
        sent = www.bytes_sent
        # The task's FAILURE is stored before its failure line reaches the log: wait for it.
        _wait(
            lambda: "lease_lost" in haul.log_tail() or "taken over" in haul.log_tail(),
            10,
            f"the failure was not logged as a lost lease:\n{haul.log_tail()}",
        )
        assert not haul.events(eid, "haul.inputs.failed")
        assert not haul.events(eid, "haul.inputs.ready")
        folder = data_dir / "executions" / eid / "inputs" / "x"
        assert not (folder / "big.bin").exists()
        assert (folder / "big.bin.haul-part").exists()  # for the worker that took over
        assert www.bytes_sent - sent < MiB  # the transfer really stopped
