"""Read-model fixtures: the same tests on SQLite and on the machine's PostgreSQL.

PostgreSQL runs at 127.0.0.1:5432 (trust auth, user postgres); the suite uses a database of
its own name (``haul_web_tests_<pid>``: two runs of the suite at once, from two checkouts, must
not share one), created here and dropped at the end, and gives every test an empty schema.
Without that server the PostgreSQL cases skip (in CI, where ``CI=true``, they fail).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from dashboard.db import make_engine, migrate

PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_DATABASE = f"haul_web_tests_{os.getpid()}"
PG_URL = f"postgresql://postgres@127.0.0.1:5432/{PG_DATABASE}"


def _pg_available() -> str | None:
    try:
        import psycopg

        with psycopg.connect(
            PG_ADMIN_URL.replace("postgresql://", "postgresql://"),
            autocommit=True,
            connect_timeout=3,
        ) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (PG_DATABASE,)
            ).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{PG_DATABASE}"')
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """The suite's own PostgreSQL database (created once per session, dropped after)."""
    reason = _pg_available()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL unavailable in CI: {reason}", pytrace=False)
        pytest.skip(f"PostgreSQL unavailable: {reason}")
    yield PG_URL
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{PG_DATABASE}" WITH (FORCE)')


def reset_pg(url: str) -> None:
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database URL, once for SQLite and once for PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'web.sqlite3'}"
    url: str = request.getfixturevalue("pg_url")
    reset_pg(url)
    return url


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """A migrated engine on ``db_url``."""
    eng = make_engine(db_url)
    migrate(eng)
    yield eng
    eng.dispose()


#: Debian's chromium (scripts/install-test-deps.sh installs it); Playwright drives it
CHROMIUM = "/usr/bin/chromium"


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium browser, or a skip (a failure in CI) when it is not installed."""
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} missing in CI (scripts/install-test-deps.sh installs it)")
        pytest.skip(f"{CHROMIUM} missing")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()
