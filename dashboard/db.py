"""The database: engine creation and Alembic migrations, run once at start.

SQLite gets WAL (readers never wait for the projector) and ``synchronous=FULL``: the consumer
acknowledges a batch right after its commit, so the commit must survive an OS crash or a power
loss too (with ``NORMAL`` it survives only a crash of the process, and a lost commit whose
entries were acknowledged would be history missing without a gap). Measured at 30 000
executions with batches of 2 000 events, ``FULL`` cost nothing visible (one fsync of the WAL
per batch). A 64 MiB page cache per connection (SQLite's default is 2 MiB; the read model's
random-key indexes, event ids and hashes, do not fit that) and a WAL checkpoint every 16 384
pages instead of 1 000 (a batch dirties several thousand pages, so the default checkpointed,
with its fsync, on every commit and wrote each page twice) took the projector from 12 300 to
15 300-16 800 events/s and its writes from 8.7 to 6.2 GB (docs/dashboard.md).

Replicas sharing one PostgreSQL take an advisory lock around the migration, so two starting at
once do not both create the tables.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url

_MIGRATIONS = Path(__file__).parent / "migrations"
_PG_LOCK_KEY = 0x6861756C  # "haul"
#: an upper bound per connection (pages are cached as they are read), not an allocation
_SQLITE_CACHE_KIB = 64 * 1024
_SQLITE_CHECKPOINT_PAGES = 16384  # 64 MiB of 4 KiB pages


def make_engine(url: str) -> Engine:
    """An engine for ``url``; ``postgresql://`` uses psycopg 3, SQLite files get WAL."""
    parsed = make_url(url)
    if parsed.drivername in {"postgresql", "postgres"}:
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(parsed, pool_pre_ping=True, pool_size=8, max_overflow=8)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute(f"PRAGMA cache_size=-{_SQLITE_CACHE_KIB}")
    cur.execute(f"PRAGMA wal_autocheckpoint={_SQLITE_CHECKPOINT_PAGES}")
    cur.close()


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    return cfg


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (idempotent)."""
    cfg = alembic_config()
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
