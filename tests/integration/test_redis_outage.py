"""Redis goes away and comes back: the worker reconnects and loses nothing it had accepted."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tests.integration.conftest import Haul, new_id
from tests.support.httpserver import TestHTTPServer
from tests.support.worker import start_worker


def test_worker_survives_a_redis_restart(
    redis_private: Any, tmp_path: Path, www: TestHTTPServer
) -> None:
    (Path(www.root) / "outage.txt").write_bytes(b"still here")
    data_dir = tmp_path / "data"
    env = {"HAUL_ALLOW_PRIVATE_ADDRESSES": "true"}
    with start_worker(redis_private.url, data_dir, extra_env=env) as w:
        haul = Haul(redis_private.url, data_dir, w)
        assert (
            haul.run("haul.prepare_inputs", {"execution_id": new_id(), "project_id": "p"})[0]
            == "SUCCESS"
        )
        redis_private.restart()
        eid = new_id()
        # The broker is back; a message sent now is handled once the worker has reconnected.
        state, summary = haul.run(
            "haul.prepare_inputs",
            {
                "execution_id": eid,
                "project_id": "p",
                "inputs": [{"name": "x", "urls": [www.url("/outage.txt")]}],
            },
            timeout=90,
        )
        assert state == "SUCCESS", summary
        assert (haul.exec_dir(eid) / "inputs" / "x" / "outage.txt").read_bytes() == b"still here"
        assert w.proc.poll() is None
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and "Connection to broker lost" not in haul.log_tail():
            time.sleep(0.05)
        assert "Connection to broker lost" in haul.log_tail()
