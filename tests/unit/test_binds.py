"""``metrics_bind`` and ``web_bind``: one parser, checked once at start."""

from __future__ import annotations

import pytest

from worker.binds import split_bind
from worker.errors import ConfigError
from worker.settings import load_settings


@pytest.mark.parametrize(
    ("bind", "parts"),
    [
        ("127.0.0.1:9808", ("127.0.0.1", 9808)),
        ("localhost:0", ("localhost", 0)),
        ("[::1]:8750", ("::1", 8750)),
        (":9808", ("0.0.0.0", 9808)),
    ],
)
def test_binds_that_parse(bind: str, parts: tuple[str, int]) -> None:
    assert split_bind(bind) == parts


@pytest.mark.parametrize("bind", ["9808", "host:", "host:http", "h:65536", "::1:80", "[]:80"])
def test_binds_that_do_not(bind: str) -> None:
    with pytest.raises(ValueError, match="is not host:port"):
        split_bind(bind)


def test_both_binds_are_checked_when_the_settings_load() -> None:
    """A bad web_bind stops any start, not only haul web's, naming the key."""
    assert load_settings({"HAUL_METRICS_BIND": ":9808"}).metrics_bind == ":9808"
    with pytest.raises(ConfigError, match="web_bind"):
        load_settings({"HAUL_WEB_BIND": "8750"})
    with pytest.raises(ConfigError, match=r"metrics_bind.*empty to turn it off"):
        load_settings({"HAUL_METRICS_BIND": "[::1]"})
