"""History trimmed before the dashboard read it, as deployed: a real worker with a small
``events_maxlen`` publishes far more than the cap while ``haul web`` is not running; started
afterwards, the dashboard says on every page (and in its API) that history before the first
event it could read is incomplete, the 404 of an execution it never saw included.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
import redis
from celery import Celery

from tests.dashboard.webproc import WebProcess, start_web
from tests.support import servers
from tests.support.httpserver import TestHTTPServer, serve
from tests.support.worker import start_worker
from worker.constants import TASK_QUEUES

pytestmark = pytest.mark.integration

BANNER = 'data-testid="incomplete"'
BULK_FILES = 120


@dataclass
class Trimmed:
    web: WebProcess
    www: TestHTTPServer
    ids: dict[str, str]


def _run(client: Celery, task: str, message: dict[str, Any]) -> None:
    result = client.send_task(task, args=[message], queue=TASK_QUEUES[task])
    deadline = time.monotonic() + 60
    while result.state not in ("SUCCESS", "FAILURE"):
        assert time.monotonic() < deadline, f"{task} did not finish"
        time.sleep(0.05)
    assert result.state == "SUCCESS", result.result


@pytest.fixture(scope="module")
def trimmed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trimmed]:
    if servers.missing_reason("redis") is not None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server unavailable in CI")
        pytest.skip("redis-server unavailable")
    base = tmp_path_factory.mktemp("trimmed")
    root = base / "www"
    root.mkdir()
    (root / "a.txt").write_bytes(b"a" * 100)
    data_dir = base / "data"
    env = {"HAUL_ALLOW_PRIVATE_ADDRESSES": "true", "HAUL_EVENTS_MAXLEN": "10"}
    ids = {k: f"{k}-{uuid.uuid4().hex[:8]}" for k in ("old", "bulk", "recent")}
    with (
        servers.redis_server(base / "redis") as srv,
        serve(root) as www,
        start_worker(srv.url, data_dir, extra_env=env),
    ):
        client = Celery("orchestrator", broker=srv.url, backend=srv.url)
        client.conf.update(task_serializer="json", accept_content=["json"])
        url = www.url("/a.txt")
        _run(client, "haul.prepare_inputs", {
            "execution_id": ids["old"], "project_id": "proj-t",
            "inputs": [{"name": "data", "urls": [url]}]})  # fmt: skip
        outputs = data_dir / "executions" / ids["bulk"] / "outputs"
        outputs.mkdir(parents=True)
        for i in range(BULK_FILES):
            (outputs / f"f{i}.txt").write_text(f"file {i}\n")
        _run(client, "haul.store_outputs", {"execution_id": ids["bulk"], "project_id": "proj-t"})
        _run(client, "haul.prepare_inputs", {
            "execution_id": ids["recent"], "project_id": "proj-t",
            "inputs": [{"name": "data", "urls": [url]}]})  # fmt: skip
        (data_dir / "executions" / ids["recent"] / "outputs" / "m.bin").write_bytes(b"m" * 10)
        _run(client, "haul.store_outputs", {"execution_id": ids["recent"], "project_id": "proj-t"})
        r = redis.Redis.from_url(srv.url)
        assert r.xlen("haul:events") < BULK_FILES  # trimmed while no dashboard read it
        db_url = f"sqlite:///{base / 'web.sqlite3'}"
        with start_web(srv.url, data_dir, db_url) as web:
            deadline = time.monotonic() + 30
            while httpx.get(f"{web.url}/api/executions/{ids['recent']}").status_code != 200:
                assert time.monotonic() < deadline, web.log_text()
                time.sleep(0.1)
            yield Trimmed(web, www, ids)


def test_the_api_says_where_history_starts(trimmed: Trimmed) -> None:
    """Health, the listing and the details name the time of the first event left."""
    health = httpx.get(trimmed.web.url + "/api/health").json()
    gap = health["incomplete_before"]
    assert gap is not None and health["lag_events"] == 0
    listing = httpx.get(trimmed.web.url + "/api/executions").json()
    assert listing["incomplete_before"] == gap
    assert trimmed.ids["old"] not in {i["execution_id"] for i in listing["items"]}
    details = httpx.get(f"{trimmed.web.url}/api/executions/{trimmed.ids['recent']}").json()
    assert details["incomplete_before"] == gap


def test_every_page_shows_the_banner(trimmed: Trimmed) -> None:
    """/, /executions, the details, the datum and the URL history pages, and the 404 of the
    execution whose events were trimmed, all carry the "history is incomplete" banner."""
    base = trimmed.web.url
    recent = httpx.get(f"{base}/api/executions/{trimmed.ids['recent']}").json()
    datum = recent["outputs"][0]["datum_id"]
    history = urlencode({"project": "proj-t", "url": trimmed.www.url("/a.txt")})
    pages = {
        "/": 200,
        "/executions": 200,
        f"/executions/{trimmed.ids['recent']}": 200,
        f"/datums/{datum}": 200,
        f"/inputs?{history}": 200,
        f"/executions/{trimmed.ids['old']}": 404,
    }
    for path, status in pages.items():
        page = httpx.get(base + path)
        assert page.status_code == status, (path, page.text[:500])
        assert BANNER in page.text, path
        assert "is incomplete" in page.text, path
