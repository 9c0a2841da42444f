"""Live transfer progress on the execution details page, in headless Chromium.

A real worker prepares one input that the test HTTP server sends slowly (throttled), with
progress reports every 0.2 s; ``haul web`` projects them from the events stream. The page,
opened once, shows the transfer's bytes, sees them grow without a reload (``live.js`` re-renders
the details from ``?partial=1``), and ends in the finished state: ``inputs ready``, the
transfer list gone, the input file listed. A module of its own (its own Redis, worker and
dashboard) so the other end-to-end module's exact execution counts stay as they are.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from celery import Celery

from tests.dashboard.conftest import chromium
from tests.dashboard.webproc import WebProcess, start_web
from tests.support import servers
from tests.support.httpserver import TestHTTPServer, serve
from tests.support.worker import start_worker
from worker.constants import TASK_QUEUES

pytestmark = pytest.mark.integration

#: above the 1 MiB "small file" path and below the 16 MiB multipart threshold: one metered
#: stream, counted per 1 MiB piece, so a report every ~1.3 s at this rate
SLOW_BYTES = 8 * 1024 * 1024
SLOW_BPS = 768 * 1024  # about 11 s: several of the page's 2 s polls see it move
PROGRESS_INTERVAL_S = 0.2


@dataclass
class Rig:
    www: TestHTTPServer
    web: WebProcess
    client: Celery


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    if servers.missing_reason("redis") is not None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server unavailable in CI")
        pytest.skip("redis-server unavailable")
    base = tmp_path_factory.mktemp("progress")
    root = base / "www"
    root.mkdir()
    (root / "slow.bin").write_bytes(os.urandom(SLOW_BYTES))
    data_dir = base / "data"
    env = {
        "HAUL_ALLOW_PRIVATE_ADDRESSES": "true",
        "HAUL_MAX_ATTEMPTS": "1",
        "HAUL_PROGRESS_INTERVAL_S": str(PROGRESS_INTERVAL_S),
    }
    with (
        servers.redis_server(base / "redis") as srv,
        serve(root) as www,
        start_worker(srv.url, data_dir, extra_env=env, concurrency=1),
        start_web(srv.url, data_dir, f"sqlite:///{base / 'web.sqlite3'}") as web,
    ):
        client = Celery("orchestrator", broker=srv.url, backend=srv.url)
        client.conf.update(task_serializer="json", accept_content=["json"])
        yield Rig(www, web, client)


@pytest.fixture(scope="module")
def browser(rig: Rig) -> Iterator[Any]:
    with chromium() as b:
        yield b


def _details(rig: Rig, execution: str) -> dict[str, Any] | None:
    r = httpx.get(f"{rig.web.url}/api/executions/{execution}", timeout=5)
    return r.json() if r.status_code == 200 else None


def _progress_value(page: Any) -> int:
    return int(page.locator("section.progress progress").first.get_attribute("value"))


def test_progress_advances_live_and_ends_finished(rig: Rig, browser: Any) -> None:
    """While a throttled input downloads, its details page shows the transfer's bytes, they
    grow without a page reload, and the page ends showing ``inputs ready`` with no transfer
    left and the file among the inputs."""
    execution = f"P-{uuid.uuid4().hex[:8]}"
    rig.www.faults.throttle("/slow.bin", SLOW_BPS)
    result = rig.client.send_task(
        "haul.prepare_inputs",
        args=[{"execution_id": execution, "project_id": "proj-progress",
               "inputs": [{"name": "data", "urls": [f"{rig.www.base_url}/slow.bin"]}]}],
        queue=TASK_QUEUES["haul.prepare_inputs"],
    )  # fmt: skip
    # The first report reaches the read model: the page can be opened on a live transfer.
    deadline = time.monotonic() + 30
    while True:
        d = _details(rig, execution)
        if d is not None and d["status"] == "preparing" and d["progress"]:
            break
        assert time.monotonic() < deadline, f"no progress projected:\n{rig.web.log_text()}"
        assert result.state not in ("SUCCESS", "FAILURE"), "finished before any progress"
        time.sleep(0.1)
    assert d["progress"][0]["bytes_total"] == SLOW_BYTES

    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"{rig.web.url}/executions/{execution}")
        page.evaluate("window.__not_reloaded = true")
        assert "preparing" in page.locator("h1 .status").inner_text()
        transfer = page.locator("section.progress .transfer")
        assert "slow.bin" in transfer.first.inner_text()
        first = _progress_value(page)
        assert 0 < first < SLOW_BYTES
        assert page.locator("section.progress progress").first.get_attribute("max") == str(
            SLOW_BYTES
        )
        # The bar moves while the page stays the same document (live.js, no reload).
        # (The value read in the same poll: the next re-render may already be the finished
        # page, which has no bar left to read.)
        later = page.wait_for_function(
            """first => {
                 const p = document.querySelector("section.progress progress");
                 const value = p === null ? 0 : Number(p.getAttribute("value"));
                 return value > first ? value : false;
               }""",
            arg=first,
            timeout=30_000,
        ).json_value()
        assert first < later <= SLOW_BYTES
        assert page.evaluate("window.__not_reloaded === true")
        # The finished state, still without a reload.
        page.locator("h1 .status-inputs_ready").wait_for(timeout=60_000)
        assert page.locator("section.progress").count() == 0
        assert "slow.bin" in page.locator("article.file h3").first.inner_text()
        assert page.evaluate("window.__not_reloaded === true")
    finally:
        context.close()
    result.get(timeout=30)
    assert result.state == "SUCCESS"
    final = _details(rig, execution)
    assert final is not None and final["status"] == "inputs_ready" and final["progress"] == []
    assert final["inputs"][0]["size"] == SLOW_BYTES
