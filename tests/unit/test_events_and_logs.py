"""Event ids are deterministic per fact; log lines never carry credentials."""

import logging

import pytest

from worker.events import build_event, event_id
from worker.logs import RedactingFilter, redact_text
from worker.models import InputSkipped


def test_event_ids_are_deterministic() -> None:
    assert event_id("haul.inputs.ready", "e1") == event_id("haul.inputs.ready", "e1")
    assert event_id("haul.inputs.ready", "e1") != event_id("haul.inputs.ready", "e2")
    assert event_id("haul.inputs.ready", "a", "bc") != event_id("haul.inputs.ready", "ab", "c")


def test_cloudevent_envelope() -> None:
    data = InputSkipped(execution_id="e", input="i", url="u", reason="r")
    ev = build_event("haul.input.skipped", "e", data, ("e", "i", "u"))
    assert ev["specversion"] == "1.0"
    assert ev["subject"] == "e"
    assert ev["datacontenttype"] == "application/json"
    assert ev["data"] == {"execution_id": "e", "input": "i", "url": "u", "reason": "r"}
    assert ev["time"].endswith("Z")
    with pytest.raises(TypeError):
        build_event("haul.inputs.ready", "e", data, ("e",))


def test_log_redaction(caplog: pytest.LogCaptureFixture) -> None:
    assert redact_text("GET https://u:p@h/x?sig=1 done") == "GET https://h/x done"
    logger = logging.getLogger("test.redact")
    logger.addFilter(RedactingFilter())
    with caplog.at_level(logging.INFO, logger="test.redact"):
        logger.info("HTTP Request: GET %s", "https://h/o?X-Amz-Signature=SECRET&a=1")
    assert "SECRET" not in caplog.text
    assert "https://h/o?a=1" in caplog.text
