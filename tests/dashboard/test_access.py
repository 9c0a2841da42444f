"""Access to ``haul web`` (contract section 10): token off and on, and the bind rule."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.dashboard.webproc import free_port, start_web, web_env

TOKEN = "s3cret-token-for-tests-0123456789"


def test_without_a_token_everything_is_open_on_loopback(redis_private: Any, tmp_path: Path
                                                        ) -> None:  # fmt: skip
    """No token: pages and API answer without credentials; /login says none is needed."""
    with start_web(redis_private.url, tmp_path, f"sqlite:///{tmp_path / 'w.db'}") as web:
        assert httpx.get(web.url + "/api/executions").json() == {
            "items": [], "next": None, "incomplete_before": None}  # fmt: skip
        assert httpx.get(web.url + "/").status_code == 200
        assert "no token set" in httpx.get(web.url + "/login").text
        metrics = httpx.get(web.url + "/metrics").text
        assert 'haul_queue_messages{queue="haul.inputs"} 0.0' in metrics
        assert "haul_web_lag_events 0.0" in metrics


def test_with_a_token_every_request_needs_it(redis_private: Any, tmp_path: Path) -> None:
    """Token set (and bound to 0.0.0.0, which a token allows): 401 JSON / redirect to /login
    without it; bearer works; /login's cookie works; a wrong token fails; the token is in no
    page, response or log line."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    env = {"HAUL_WEB_TOKEN": TOKEN}
    with start_web(redis_private.url, tmp_path, f"sqlite:///{tmp_path / 'w.db'}", env,
                   bind=f"0.0.0.0:{free_port()}", headers=auth) as web:  # fmt: skip
        for path in ("/api/executions", "/api/health", "/metrics", "/openapi.json"):
            r = httpx.get(web.url + path)
            assert r.status_code == 401 and r.json()["error"] == "unauthorized", path
        r = httpx.get(web.url + "/executions?project=p")
        assert r.status_code == 303
        assert r.headers["location"] == "/login?next=%2Fexecutions%3Fproject%3Dp"
        assert httpx.get(web.url + "/api/executions", headers=auth).status_code == 200
        wrong = {"Authorization": "Bearer nope"}
        assert httpx.get(web.url + "/api/executions", headers=wrong).status_code == 401
        with httpx.Client(base_url=web.url) as browser:
            bad = browser.post("/login", data={"token": "nope", "next": "/"})
            assert bad.status_code == 401 and "haul_session" not in browser.cookies
            ok = browser.post("/login", data={"token": TOKEN, "next": "/executions"})
            assert ok.status_code == 303 and ok.headers["location"] == "/executions"
            cookie = browser.cookies["haul_session"]
            assert TOKEN not in cookie
            page = browser.get("/executions")
            assert page.status_code == 200 and TOKEN not in page.text
            assert browser.get("/api/health").status_code == 200
            away = browser.post("/login", data={"token": TOKEN, "next": "//evil.example/"})
            assert away.headers["location"] == "/"
        assert TOKEN not in web.log_text()


def test_open_bind_without_a_token_is_refused(tmp_path: Path) -> None:
    """Binding 0.0.0.0 without HAUL_WEB_TOKEN exits 2 naming web_bind, before serving."""
    env = web_env("redis://127.0.0.1:1/0", tmp_path, f"sqlite:///{tmp_path / 'w.db'}")
    done = subprocess.run(
        [sys.executable, "-m", "worker.cli", "web", "--bind", f"0.0.0.0:{free_port()}"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "web_bind" in done.stderr and "HAUL_WEB_TOKEN" in done.stderr


@pytest.mark.parametrize("bind", ["localhost:8750", "[::1]:8750", "127.0.0.2:1"])
def test_loopback_names_are_loopback(bind: str) -> None:
    """localhost, ::1 and all of 127/8 count as loopback."""
    from dashboard.auth import check_bind

    assert check_bind(bind, None)[1] == int(bind.rsplit(":", 1)[1])
