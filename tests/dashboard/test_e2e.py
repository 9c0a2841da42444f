"""haul as deployed, seen through ``haul web``: a real Redis, a real worker, real executions,
the dashboard as a subprocess, its API checked field by field against the events, and its
pages in headless Chromium (Debian's, through Playwright).

Executions: ``A`` reads two files (one named like markup) and stores two outputs (one named
like markup); ``B`` reads the same URL after its bytes changed (a change warning); ``C``
fails on a missing file. Later ``D`` appears live in an open listing, and ``E`` runs while the
dashboard is stopped (catch-up).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
import redis
from celery import Celery

from dashboard.render import size
from tests.dashboard.conftest import chromium
from tests.dashboard.webproc import WebProcess, spawn_web, start_web
from tests.support import servers
from tests.support.httpserver import TestHTTPServer, serve
from tests.support.worker import start_worker
from worker.constants import EV_PROGRESS, TASK_QUEUES

pytestmark = pytest.mark.integration

XSS = "<img src=x onerror=alert(1)>"
#: the same markup without spaces (the worker refuses spaces in a URL): HTML reads
#: ``<img/src=x/onerror=...>`` as an img element too, were it not escaped
XSS_PATH = "<img/src=x/onerror=alert(1)>.txt"


@dataclass
class World:
    redis_url: str
    data_dir: Path
    www: TestHTTPServer
    web: WebProcess
    db_url: str
    client: Celery
    r: redis.Redis
    ids: dict[str, str]

    def run(self, task: str, message: dict[str, Any], timeout_s: float = 60) -> str:
        result = self.client.send_task(task, args=[message], queue=TASK_QUEUES[task])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if result.state in ("SUCCESS", "FAILURE"):
                return str(result.state)
            time.sleep(0.05)
        raise TimeoutError(f"{task} did not finish")

    def prepare(self, execution: str, urls: list[str]) -> None:
        self.run("haul.prepare_inputs", {
            "execution_id": execution, "project_id": "proj-web",
            "inputs": [{"name": "data", "urls": urls}],
        })  # fmt: skip

    def events(self, subject: str) -> list[dict[str, Any]]:
        out = []
        for _id, fields in self.r.xrange("haul:events"):
            ev = json.loads(fields[b"event"])
            if ev.get("subject") == subject and ev["type"] != EV_PROGRESS:
                out.append(ev)
        return out

    def api(self, path: str, **params: Any) -> Any:
        response = httpx.get(self.web.url + path, params=params, timeout=10)
        assert response.status_code == 200, response.text
        return response.json()

    def wait_projected(self, execution: str, status: str, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            r = httpx.get(f"{self.web.url}/api/executions/{execution}", timeout=5)
            if r.status_code == 200 and r.json()["status"] == status:
                return
            time.sleep(0.1)
        raise AssertionError(f"{execution} not {status} in the dashboard:\n{self.web.log_text()}")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    if servers.missing_reason("redis") is not None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server unavailable in CI")
        pytest.skip("redis-server unavailable")
    base = tmp_path_factory.mktemp("e2e")
    root = base / "www"
    root.mkdir()
    (root / "labels.txt").write_bytes(b"labels version 1\n" * 100)
    (root / XSS_PATH).parent.mkdir(parents=True)
    (root / XSS_PATH).write_bytes(b"markup-named input\n")
    data_dir = base / "data"
    db_url = f"sqlite:///{base / 'web.sqlite3'}"
    env = {"HAUL_ALLOW_PRIVATE_ADDRESSES": "true", "HAUL_MAX_ATTEMPTS": "1"}
    with (
        servers.redis_server(base / "redis") as srv,
        serve(root) as www,
        start_worker(srv.url, data_dir, extra_env=env, concurrency=2),
        start_web(srv.url, data_dir, db_url) as web,
    ):
        client = Celery("orchestrator", broker=srv.url, backend=srv.url)
        client.conf.update(task_serializer="json", accept_content=["json"])
        ids = {k: f"{k}-{uuid.uuid4().hex[:8]}" for k in "ABCDE"}
        w = World(srv.url, data_dir, www, web, db_url, client, redis.Redis.from_url(srv.url),
                  ids)  # fmt: skip
        labels = f"{www.base_url}/labels.txt"
        w.prepare(ids["A"], [labels, f"{www.base_url}/{XSS_PATH}"])
        kinds = [(e["type"], e["data"]) for e in w.events(ids["A"])]
        assert kinds[-1][0] == "haul.inputs.ready", json.dumps(kinds)
        outputs = data_dir / "executions" / ids["A"] / "outputs"
        (outputs / f"{XSS}.txt").write_text("markup-named output\n")
        (outputs / "model.bin").write_bytes(b"weights" * 50)
        (outputs / "model.bin.metadata.json").write_text(json.dumps({"valohai.tags": ["best"]}))
        w.run("haul.store_outputs", {"execution_id": ids["A"], "project_id": "proj-web"})
        (root / "labels.txt").write_bytes(b"labels version 2\n" * 120)
        w.prepare(ids["B"], [labels])
        w.prepare(ids["C"], [f"{www.base_url}/missing.txt"])
        w.wait_projected(ids["A"], "outputs_stored")
        w.wait_projected(ids["B"], "inputs_ready")
        w.wait_projected(ids["C"], "inputs_failed")
        yield w


def _by_type(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e["data"] for e in events if e["type"] == kind]


def test_listing_matches_the_events(world: World) -> None:
    """Every listed field of A, B and C equals what the events say."""
    items = {
        i["execution_id"]: i for i in world.api("/api/executions", project="proj-web")["items"]
    }
    a, b, c = (items[world.ids[k]] for k in "ABC")
    ev_a = world.events(world.ids["A"])
    ready = _by_type(ev_a, "haul.inputs.ready")[0]
    stored = _by_type(ev_a, "haul.outputs.stored")[0]
    assert a["status"] == "outputs_stored" and a["project_id"] == "proj-web"
    assert a["inputs"] == {"files": ready["files"], "bytes": ready["bytes"]} == {
        "files": 2, "bytes": ready["bytes"]}  # fmt: skip
    assert a["outputs"] == {"files": stored["files"], "bytes": stored["bytes"]}
    assert a["warnings"] == [] and a["error"] is None
    assert a["created_at"] == min(e["time"] for e in ev_a)
    assert a["updated_at"] == max(e["time"] for e in ev_a)
    change = _by_type(world.events(world.ids["B"]), "haul.input.changed")[0]
    assert b["warnings"] == [
        {"input": change["input"], "url": change["url"], "message": change["message"]}
    ]
    failed = _by_type(world.events(world.ids["C"]), "haul.inputs.failed")[0]
    assert c["status"] == "inputs_failed" and c["error"] == failed["error"]
    warned = world.api("/api/executions", warnings="true", project="proj-web")["items"]
    assert [i["execution_id"] for i in warned] == [world.ids["B"]]
    newest_first = [i["execution_id"] for i in world.api("/api/executions")["items"]]
    assert newest_first.index(world.ids["C"]) < newest_first.index(world.ids["A"])


def test_filters_left_empty_are_filters_not_given(world: World) -> None:
    """The contract's query template with its blanks unfilled
    (``?project=&status=&warnings=true&limit=&cursor=``) is the listing with only the filters
    that have a value: here the warned executions, B alone; all blank is the whole listing."""
    blank = "project=&status=&warnings=true&limit=&cursor="
    r = httpx.get(f"{world.web.url}/api/executions?{blank}", timeout=10)
    assert r.status_code == 200, r.text
    assert [i["execution_id"] for i in r.json()["items"]] == [world.ids["B"]]
    r = httpx.get(f"{world.web.url}/api/executions?project=&status=&warnings=&limit=", timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["items"] == world.api("/api/executions")["items"]
    # No cap in the contract: a limit above the page size (200) is a page of 200, not a 422.
    r = httpx.get(f"{world.web.url}/api/executions?limit=100000", timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["items"] == world.api("/api/executions")["items"]


def test_details_match_the_events(world: World) -> None:
    """Inputs, change, failure, outputs and the timeline of the details API, field by field."""
    ev_a = world.events(world.ids["A"])
    d = world.api(f"/api/executions/{world.ids['A']}")
    downloads = sorted(_by_type(ev_a, "haul.input.downloaded"), key=lambda x: x["path"])
    got = sorted(d["inputs"], key=lambda x: x["path"])
    keys = ("input", "url", "path", "size", "md5", "sha1", "sha256", "cached", "seconds")
    assert [{k: g[k] for k in keys} for g in got] == [{k: e[k] for k in keys} for e in downloads]
    assert [g["source"]["etag"] for g in got] == [e["source"]["etag"] for e in downloads]
    outs = sorted(_by_type(ev_a, "haul.output.stored"), key=lambda x: x["datum_id"])
    okeys = ("datum_id", "path", "uri", "key", "size", "md5", "sha1", "sha256", "tags", "alias",
             "dataset_versions")  # fmt: skip
    got_out = sorted(d["outputs"], key=lambda x: x["datum_id"])
    assert [{k: g[k] for k in okeys} for g in got_out] == [{k: e[k] for k in okeys} for e in outs]
    assert {e["id"] for e in d["events"]} == {e["id"] for e in ev_a}
    b = world.api(f"/api/executions/{world.ids['B']}")
    change = _by_type(world.events(world.ids["B"]), "haul.input.changed")[0]
    assert len(b["changes"]) == 1
    got_change = b["changes"][0]
    assert {k: got_change[k] for k in ("input", "url", "message", "previous", "current")} == {
        k: change[k] for k in ("input", "url", "message", "previous", "current")}  # fmt: skip
    assert got_change["previous"]["execution_id"] == world.ids["A"]
    c = world.api(f"/api/executions/{world.ids['C']}")
    failed = _by_type(world.events(world.ids["C"]), "haul.inputs.failed")[0]
    assert [(f["code"], f["message"], f["url"]) for f in c["failures"]] == [
        (failed["error"]["code"], failed["error"]["message"], failed["url"])
    ]


def test_datum_and_url_history(world: World) -> None:
    """The datum names its producer and that execution's inputs; the URL history has one
    change point; unknown ids are JSON 404s."""
    model = next(o for o in world.api(f"/api/executions/{world.ids['A']}")["outputs"]
                 if o["path"] == "model.bin")  # fmt: skip
    datum = world.api(f"/api/datums/{model['datum_id']}")
    assert datum["tags"] == ["best"] and datum["execution_id"] == world.ids["A"]
    assert datum["producer"]["execution_id"] == world.ids["A"]
    assert len(datum["producer_inputs"]) == 2
    history = world.api("/api/inputs", project="proj-web", url=f"{world.www.base_url}/labels.txt")
    assert [r["execution_id"] for r in history["reads"]] == [world.ids["A"], world.ids["B"]]
    assert [r["changed"] for r in history["reads"]] == [False, True]
    assert history["change_points"] == 1
    for path in ("/api/executions/nope", "/api/datums/nope"):
        r = httpx.get(world.web.url + path)
        assert r.status_code == 404 and r.json()["error"] == "not_found"
    health = world.api("/api/health")
    assert health["status"] == "ok" and health["lag_events"] == 0
    assert health["last_event_time"] is not None


# ------------------------------------------------------------------------ the browser


@pytest.fixture(scope="module")
def browser(world: World) -> Iterator[Any]:
    with chromium() as b:
        yield b


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context()
    pg = context.new_page()
    pg.dialogs = []
    pg.on("dialog", lambda d: (pg.dialogs.append(d.message), d.dismiss()))
    pg.set_default_timeout(15_000)
    yield pg
    context.close()


def test_warning_in_listing_and_details_and_link_to_previous(world: World, page: Any) -> None:
    """The listing shows B's warning badge naming the input; B's page shows the message and
    the previous execution's link, which opens A."""
    page.goto(world.web.url + "/")
    row_b = page.locator(f"tr[data-execution='{world.ids['B']}']")
    assert "input changed: data" in row_b.locator(".badge.warning").inner_text()
    row_a = page.locator(f"tr[data-execution='{world.ids['A']}']")
    assert row_a.locator(".badge.warning").count() == 0
    row_b.locator("a").first.click()
    page.wait_for_url(f"**/executions/{world.ids['B']}")
    change = page.locator("article.change")
    message = world.api(f"/api/executions/{world.ids['B']}")["changes"][0]["message"]
    assert message in change.inner_text()
    change.locator("a.previous").click()
    page.wait_for_url(f"**/executions/{world.ids['A']}")
    assert world.ids["A"] in page.locator("h1").inner_text()


def test_markup_in_urls_and_names_is_text(world: World, page: Any) -> None:
    """An input URL and an output name carrying <img onerror> show as text, never as markup."""
    for path in ("/", f"/executions/{world.ids['A']}"):
        page.goto(world.web.url + path)
        assert page.locator("img").count() == 0
    text = page.locator("main").inner_text()
    assert f"{world.www.base_url}/{XSS_PATH}" in text  # the input URL, as text
    assert f"{XSS}.txt" in page.locator("article.file h3 a code").all_inner_texts()
    out = next(o for o in world.api(f"/api/executions/{world.ids['A']}")["outputs"]
               if o["path"] == f"{XSS}.txt")  # fmt: skip
    page.goto(f"{world.web.url}/datums/{out['datum_id']}")
    assert page.locator("img").count() == 0 and XSS in page.locator("main").inner_text()
    assert page.dialogs == []


def test_outputs_on_the_details_page_show_datum_ids_keys_and_hashes(
    world: World, page: Any
) -> None:
    """A's page lists each output with its datum id (a link to the datum's page), key, URI
    and all three hashes."""
    outputs = world.api(f"/api/executions/{world.ids['A']}")["outputs"]
    page.goto(f"{world.web.url}/executions/{world.ids['A']}")
    for out in outputs:
        article = page.locator("article.file").filter(
            has=page.locator(f"a.datum[href='/datums/{out['datum_id']}']")
        )
        text = article.inner_text()
        assert f"datum://{out['datum_id']}" in text, text
        for key in ("key", "uri", "md5", "sha1", "sha256"):
            assert out[key] in text, (key, text)


def test_url_history_page_shows_every_read_with_its_hashes(world: World, page: Any) -> None:
    """/inputs?project=&url= lists each read of labels.txt (A, then B) with its execution's
    link, size and all three hashes, and marks B's read as where the content changed."""
    url = f"{world.www.base_url}/labels.txt"
    reads = world.api("/api/inputs", project="proj-web", url=url)["reads"]
    page.goto(f"{world.web.url}/inputs?" + urlencode({"project": "proj-web", "url": url}))
    rows = page.locator("table.history tbody tr")
    assert rows.count() == len(reads) == 2
    for i, read in enumerate(reads):
        row = rows.nth(i)
        text = row.inner_text()
        for key in ("md5", "sha1", "sha256"):
            assert read[key] in text, (key, text)
        assert size(read["size"]) in text
        link = row.locator(f"a[href='/executions/{read['execution_id']}']")
        assert link.inner_text() == read["execution_id"]
        assert ("changed" in (row.get_attribute("class") or "")) is read["changed"]
    assert [r["execution_id"] for r in reads] == [world.ids["A"], world.ids["B"]]
    assert "changed" in rows.nth(1).locator(".badge.warning").inner_text()


def test_new_execution_appears_live(world: World, page: Any) -> None:
    """With the listing open, a new execution's row appears without a page reload."""
    page.goto(world.web.url + "/executions")
    page.evaluate("window.__not_reloaded = true")
    world.prepare(world.ids["D"], [f"{world.www.base_url}/labels.txt"])
    page.locator(f"tr[data-execution='{world.ids['D']}']").wait_for(timeout=30_000)
    assert page.evaluate("window.__not_reloaded === true")


def test_failure_on_the_details_page(world: World, page: Any) -> None:
    """C's page shows the failure's code and message."""
    page.goto(f"{world.web.url}/executions/{world.ids['C']}")
    failed = world.api(f"/api/executions/{world.ids['C']}")["failures"][0]
    text = page.locator("section.failures").inner_text()
    assert failed["code"] in text and failed["message"] in text


def test_restart_catches_up(world: World, tmp_path: Path) -> None:
    """Stopped, the dashboard misses E; started again on the same database, it shows E."""
    world.web.stop()
    world.prepare(world.ids["E"], [f"{world.www.base_url}/labels.txt"])
    proc, url, log_path = spawn_web(world.redis_url, world.data_dir, world.db_url)
    world.web = WebProcess(proc, url, log_path)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/api/executions/{world.ids['E']}").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        e = world.api(f"/api/executions/{world.ids['E']}")
        assert e["status"] == "inputs_ready"
        all_ids = [i["execution_id"] for i in world.api("/api/executions")["items"]]
        assert sorted(all_ids) == sorted(world.ids[k] for k in "ABCDE")
    finally:
        shutil.copy(log_path, tmp_path / "web.log")
