"""Hostile input against a real worker: one Redis and one worker per module, many cases each.

Every case checks the same four promises (issue 11): a clear event with a code, nothing written
outside the execution, no partial file, and the worker serves the next message. :class:`Case`
holds what a case needs for that; :func:`served_next` is the "next message" check.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Haul, new_id
from tests.support import servers
from tests.support.fixtures import _require
from tests.support.httpserver import TestHTTPServer, serve
from tests.support.worker import start_worker
from worker.constants import TASK_QUEUES

TERMINAL_INPUTS = ("haul.inputs.ready", "haul.inputs.failed", "haul.message.rejected")
_NEXT = ("data/executions/next-", "www/ping-")
TERMINAL_OUTPUTS = ("haul.outputs.stored", "haul.outputs.failed", "haul.message.rejected")


@dataclass
class Rig:
    """A worker, its Redis, its test HTTP server, and a folder outside haul's data dir."""

    haul: Haul
    www: TestHTTPServer
    root: Path
    #: a folder that is neither haul's nor an execution's: hostile links point into it
    outside: Path

    @property
    def data_dir(self) -> Path:
        return self.haul.data_dir


@contextlib.contextmanager
def rig(
    factory: pytest.TempPathFactory,
    name: str,
    extra_env: Mapping[str, str] | None = None,
    app: str = "tests.hostile.guarded_app",
    data_dir: Path | None = None,
) -> Iterator[Rig]:
    """A private Redis, a worker (``app``) and an HTTP server for one test module; haul's data
    folder is ``data_dir`` (default: ``data`` in the module's folder)."""
    _require("redis")
    root = factory.mktemp(name)
    (root / "www").mkdir()
    outside = root / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not haul's to read\n")
    data = data_dir or root / "data"
    (data / "executions").mkdir(parents=True)
    env = {"HAUL_MAX_ATTEMPTS": "1", "HAUL_CACHE_ENABLED": "false", **(extra_env or {})}
    with (
        servers.redis_server(root / "redis") as redis_srv,
        serve(root / "www") as www,
        start_worker(
            redis_srv.url, data, extra_env=env, app=app, log_path=root / "worker.log"
        ) as w,
    ):
        yield Rig(Haul(redis_srv.url, data, w), www, root, outside)


def tree(folder: Path, skip: tuple[Path, ...] = ()) -> dict[str, tuple[int, int]]:
    """Every path under ``folder`` (not following links) with its (mode, size), minus ``skip``."""
    out: dict[str, tuple[int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        base = Path(dirpath)
        dirnames[:] = [d for d in dirnames if base / d not in skip]
        for entry in [*dirnames, *filenames]:
            path = base / entry
            if path in skip:
                continue
            st = os.lstat(path)
            # A folder's size grows with its entries; what is in it is listed anyway.
            size = 0 if stat.S_ISDIR(st.st_mode) else st.st_size
            out[str(path.relative_to(folder))] = (st.st_mode, size)
    return out


class Case:
    """One hostile message: what exists before it, so what it changed can be checked after."""

    def __init__(self, r: Rig, execution_id: str | None = None) -> None:
        self.r = r
        self.eid = execution_id or new_id()
        self.exec_dir = r.haul.exec_dir(self.eid)
        self._skip = (
            self.exec_dir,
            r.data_dir / "store",
            r.data_dir / "cache",
            r.data_dir / "run",  # the worker's metrics files
            r.root / "redis",
            Path(r.haul.worker.log_path),
        )
        self.before = tree(r.root, self._skip)

    def run(self, task: str, message: Any, timeout: float = 60) -> tuple[str, Any]:
        return self.r.haul.run(task, message, timeout)

    def outcome(self, *types: str) -> list[dict[str, Any]]:
        """This execution's events of ``types`` (by subject)."""
        return [e for e in self.r.haul.events(self.eid) if e["type"] in types]

    def failed(self, task_types: tuple[str, ...] = TERMINAL_INPUTS) -> dict[str, Any]:
        """The one terminal event of the execution, which must be a failure with a code."""
        events = self.outcome(*task_types)
        assert len(events) == 1, [e["type"] for e in self.r.haul.events(self.eid)]
        event = events[0]
        assert event["type"].endswith(".failed"), event
        error = event["data"]["error"]
        assert error["code"] and error["message"], error
        return event

    def check_clean(self) -> None:
        """Nothing written outside the execution, and no partial file inside it."""

        def own(snapshot: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
            # What :func:`served_next` adds belongs to the next message, not to this case.
            return {k: v for k, v in snapshot.items() if not k.startswith(_NEXT)}

        assert own(tree(self.r.root, self._skip)) == own(self.before)
        if self.exec_dir.is_dir() and not self.exec_dir.is_symlink():
            partial = [p for p in self.exec_dir.rglob("*") if ".haul-part" in p.name]
            assert not partial, partial
            assert not list(self.exec_dir.rglob("*.tmp"))


def rejected(r: Rig, task: str, message: Any, **send: Any) -> dict[str, Any]:
    """Send ``message``; return the one ``haul.message.rejected`` it caused."""
    seen = {e["id"] for e in r.haul.events(type_="haul.message.rejected")}
    state, summary = r.haul.run(task, message) if not send else _send_raw(r, task, **send)
    assert state == "SUCCESS" and summary["status"] == "rejected", summary
    new = [e for e in r.haul.events(type_="haul.message.rejected") if e["id"] not in seen]
    assert len(new) == 1, new
    data = new[0]["data"]
    assert data["task"] == task and data["reason"] and data["errors"], data
    return new[0]


def _send_raw(r: Rig, task: str, **send: Any) -> tuple[str, Any]:
    result = r.haul.client.send_task(task, queue=TASK_QUEUES[task], **send)
    return _wait(r, result)


def _wait(r: Rig, result: Any, timeout: float = 60) -> tuple[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result.state in ("SUCCESS", "FAILURE"):
            return result.state, result.result
        time.sleep(0.05)
    raise TimeoutError(f"no result in {timeout} s; worker log:\n{r.haul.log_tail()}")


def served_next(r: Rig) -> None:
    """The worker still serves: a small real download right after the hostile case."""
    name = f"ping-{new_id('p')}.txt"
    (r.www.root / name).write_bytes(b"pong")
    eid = new_id("next")
    state, summary = r.haul.run(
        "haul.prepare_inputs",
        {
            "execution_id": eid,
            "project_id": "p",
            "inputs": [{"name": "n", "urls": [r.www.url(name)]}],
        },
    )
    assert state == "SUCCESS" and summary["status"] == "ready", summary
    assert (r.haul.exec_dir(eid) / "inputs" / "n" / name).read_bytes() == b"pong"
    assert r.haul.worker.proc.poll() is None
