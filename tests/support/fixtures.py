"""Session-scoped pytest fixtures for the real local servers in tests/support/servers.py.

Load from tests/conftest.py with ``pytest_plugins = ["tests.support.fixtures"]``.

A server whose binaries are missing skips the tests that use it, except in CI (env ``CI=true``),
where a skipped store is a failure.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest

from tests.support import rabbitmq, servers
from tests.support.servers import (
    AzuriteServer,
    FakeGcsServer,
    MotoServer,
    NginxServer,
    RedisServer,
    SwiftServer,
)

__all__ = [
    "azure_srv",
    "broker_kind",
    "gcs_srv",
    "nginx_srv",
    "redis_private",
    "redis_srv",
    "s3_srv",
    "swift_srv",
]


def _require(name: str) -> None:
    """Skip (or, in CI, fail) when server ``name`` cannot run on this machine."""
    reason = servers.missing_reason(name)
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{name} server unavailable in CI: {reason}", pytrace=False)
    pytest.skip(f"{name} server unavailable: {reason}")


@pytest.fixture(scope="session")
def redis_srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """Shared redis-server. A test that stops it must start() it again (try/finally)."""
    _require("redis")
    with servers.redis_server(tmp_path_factory.mktemp("redis")) as srv:
        yield srv


@pytest.fixture
def redis_private(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server for one test only (~0.1 s): free to stop, kill or restart."""
    _require("redis")
    with servers.redis_server(tmp_path_factory.mktemp("redis-private")) as srv:
        yield srv


@pytest.fixture(scope="session")
def s3_srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    _require("moto")
    with servers.moto_server(tmp_path_factory.mktemp("moto")) as srv:
        yield srv


@pytest.fixture(scope="session")
def azure_srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzuriteServer]:
    _require("azurite")
    with servers.azurite_server(tmp_path_factory.mktemp("azurite")) as srv:
        yield srv


@pytest.fixture(scope="session")
def gcs_srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeGcsServer]:
    _require("fake_gcs")
    with servers.fake_gcs_server(tmp_path_factory.mktemp("fake-gcs")) as srv:
        yield srv


@pytest.fixture(scope="session")
def swift_srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SwiftServer]:
    _require("swift")
    with servers.swift_server(tmp_path_factory.mktemp("swift")) as srv:
        yield srv


@pytest.fixture(scope="session")
def nginx_srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NginxServer]:
    _require("nginx")
    with servers.nginx_server(
        tmp_path_factory.mktemp("nginx"), tmp_path_factory.mktemp("www")
    ) as srv:
        yield srv


def require_rabbitmq() -> None:
    """Skip (or, in CI, fail) when the machine's RabbitMQ is not there."""
    reason = rabbitmq.missing_reason()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"rabbitmq unavailable in CI: {reason}", pytrace=False)
    pytest.skip(f"rabbitmq unavailable: {reason}")


BROKERS = ("redis", "rabbitmq")


@pytest.fixture(params=BROKERS)
def broker_kind(request: pytest.FixtureRequest) -> str:
    """Which broker a worker test runs on: every such test runs once per broker."""
    kind: str = request.param
    if kind == "rabbitmq":
        require_rabbitmq()
    return kind


@contextlib.contextmanager
def broker_for(kind: str, redis: RedisServer, db: int) -> Iterator[str]:
    """The broker URL for ``kind``: a Redis database (flushed), or a RabbitMQ vhost of its own."""
    if kind == "rabbitmq":
        with rabbitmq.rabbitmq_vhost() as url:
            yield url
        return
    url = redis.url_for_db(db)
    import redis as redis_lib

    redis_lib.Redis.from_url(url).flushdb()
    yield url
