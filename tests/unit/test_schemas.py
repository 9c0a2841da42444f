"""The JSON Schemas kept in schemas/ are exactly what the models generate."""

from worker.schemas import stale


def test_schemas_are_current() -> None:
    assert stale() == [], "run: python -m worker.schemas"
