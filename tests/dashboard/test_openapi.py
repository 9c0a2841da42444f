"""Schemathesis against ``/openapi.json``: generated requests to every API operation, no 5xx,
and every response conforms to the documented schema (bounded: a few dozen cases each).

The app runs in-process (ASGI) on a SQLite read model holding a few real executions, with
Redis unreachable on purpose: health must say so, not fail.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, given, settings
from prometheus_client import CollectorRegistry
from schemathesis.specs.openapi.checks import positive_data_acceptance

from dashboard.app import WebContext, create_app
from dashboard.auth import Guard
from dashboard.db import make_engine, migrate
from dashboard.health import HealthProbe
from dashboard.projector import Projector
from dashboard.queries import Queries
from tests.dashboard import factory as f
from tests.dashboard.webproc import free_port


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory) -> Any:
    path: Path = tmp_path_factory.mktemp("openapi") / "web.sqlite3"
    engine = make_engine(f"sqlite:///{path}")
    migrate(engine)
    u = "https://h/x"
    Projector(engine).project([f.entry(e) for e in [
        f.downloaded("e1", "p", u, "v1"), f.ready("e1", "p", 1, 10, at=1),
        f.downloaded("e2", "p", u, "v2", at=2), f.changed("e2", "p", u, "v1", "v2", "e1", at=2),
        f.stored("e2", "p", "d" * 32, "out.txt", "x", at=3), f.inputs_failed("e3", "p", u, at=4),
    ]])  # fmt: skip
    queries = Queries(engine)
    nowhere = redis.Redis(port=free_port(), socket_connect_timeout=0.5)
    probe = HealthProbe(nowhere, "haul:events", "haul-web", queries)
    app = create_app(WebContext(queries, Guard(None), probe.health, CollectorRegistry()))
    return schemathesis.openapi.from_asgi("/openapi.json", app)


OPERATIONS = [
    "GET /api/executions",
    "GET /api/executions/{execution_id}",
    "GET /api/datums/{datum_id}",
    "GET /api/inputs",
    "GET /api/health",
]


@pytest.mark.parametrize("operation", OPERATIONS)
def test_api_never_fails_and_keeps_its_schema(api_schema: Any, operation: str) -> None:
    """Any generated request: no 5xx, a documented status, a body matching its schema."""
    method, path = operation.split(" ")
    op = api_schema[path][method]

    @given(case=op.as_strategy())
    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck),
              database=None)  # fmt: skip
    def run(case: Any) -> None:
        # A cursor is opaque: any string fits its schema, only the ones handed out work
        # (400 otherwise), so "every schema-valid request is accepted" cannot hold for it.
        case.call_and_validate(excluded_checks=[positive_data_acceptance])

    run()


def test_every_operation_is_covered(api_schema: Any) -> None:
    """The list above is every operation the OpenAPI document describes."""
    found = {f"{op.ok().method.upper()} {op.ok().path}" for op in api_schema.get_all_operations()}
    assert found == set(OPERATIONS)
