"""The structlog pipeline: formats, the task context in threads, redaction everywhere."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from io import StringIO
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog

from worker.logs import configure_logging, get_logger
from worker.observability.context import bind_task, clear_task, in_current_context

SECRET_URL = "https://user:hunter2@bucket.example/k?X-Amz-Signature=deadbeef&X-Amz-Credential=AKIA"


@pytest.fixture
def out() -> Iterator[StringIO]:
    stream = StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    yield stream
    clear_task()
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    structlog.reset_defaults()


def _lines(stream: StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_json_lines_carry_the_task_context_in_the_task_and_its_threads(out: StringIO) -> None:
    """A stdlib record, a structlog line and a line from a thread started with the copied
    context all carry execution_id, project_id and task; a thread without it does not."""
    configure_logging("json", "INFO", stream=out)
    bind_task("haul.prepare_inputs", {"execution_id": "exec-1", "project_id": "p-1"})
    logging.getLogger("haul.test").info("from %s", "stdlib")
    get_logger("haul.test").info("from structlog", size_bytes=3)
    t = threading.Thread(target=in_current_context(logging.getLogger("haul.t").info), args=("x",))
    t.start()
    t.join()
    bare = threading.Thread(target=logging.getLogger("haul.bare").info, args=("bare",))
    bare.start()
    bare.join()
    clear_task()
    logging.getLogger("haul.test").info("after the task")
    lines = _lines(out)
    assert [line["message"] for line in lines] == [
        "from stdlib", "from structlog", "x", "bare", "after the task"
    ]  # fmt: skip
    for line in lines[:3]:
        assert line["execution_id"] == "exec-1"
        assert line["project_id"] == "p-1"
        assert line["task"] == "haul.prepare_inputs"
        assert line["level"] == "info" and "time" in line and "logger" in line
    assert lines[1]["size_bytes"] == 3
    assert "execution_id" not in lines[3] and "execution_id" not in lines[4]


def test_console_lines_show_the_context_as_key_value(out: StringIO) -> None:
    """Console lines are for people: the message, then the task fields as key=value."""
    configure_logging("console", "INFO", stream=out)
    bind_task("haul.store_outputs", {"execution_id": "exec-2", "project_id": "p-2"})
    logging.getLogger("haul.test").warning("stored %d files", 3)
    text = out.getvalue()
    assert "stored 3 files" in text
    assert "execution_id=exec-2" in text and "project_id=p-2" in text
    assert "task=haul.store_outputs" in text
    assert not text.lstrip().startswith("{")


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_credentials_never_reach_a_line(out: StringIO, fmt: str) -> None:
    """Userinfo and presigned query parameters are removed from the message, from fields
    (structlog's and stdlib ``extra``) and from tracebacks, in both formats."""
    configure_logging(fmt, "INFO", stream=out)
    log = logging.getLogger("haul.secret")
    log.info("GET %s failed", SECRET_URL)
    log.info("extra field", extra={"url": SECRET_URL})
    get_logger("haul.secret").info("bound", url=SECRET_URL, nested={"u": [SECRET_URL]})
    try:
        raise RuntimeError(f"cannot read {SECRET_URL}")
    except RuntimeError:
        log.exception("boom")
    text = out.getvalue()
    for secret in ("hunter2", "deadbeef", "AKIA", "X-Amz-"):
        assert secret not in text, text
    assert text.count("https://bucket.example/k") >= 5
    assert "RuntimeError" in text


def test_redis_and_amqp_passwords_are_redacted(out: StringIO) -> None:
    """Broker URLs with passwords (Celery's own lines name them) lose their userinfo."""
    configure_logging("json", "INFO", stream=out)
    logging.getLogger("celery.worker").info(
        "Connected to amqp://guest:s3cret@127.0.0.1:5672/v and redis://:pw0rd@127.0.0.1:6379/0"
    )
    text = out.getvalue()
    assert "s3cret" not in text and "pw0rd" not in text
    assert "amqp://127.0.0.1:5672/v" in text


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_haul_web_logs_through_the_same_pipeline(redis_private: Any, tmp_path: Path, fmt: str
                                                 ) -> None:  # fmt: skip
    """``haul web`` renders its own and uvicorn's records with haul's processors: JSON lines
    (time, level, logger, message) or console lines, not a stdlib format of its own."""
    from tests.dashboard.webproc import start_web

    env = {"HAUL_LOG_FORMAT": fmt}
    with start_web(redis_private.url, tmp_path, f"sqlite:///{tmp_path / 'w.db'}", env) as web:
        httpx.get(web.url + "/api/health", timeout=5)
        text = web.log_text()
    lines = [x for x in text.splitlines() if x.strip() and not x.startswith("haul web: ")]
    assert lines, text
    if fmt == "json":
        records = [json.loads(x) for x in lines]  # every line is one JSON object
        assert all({"time", "level", "logger", "message"} <= r.keys() for r in records)
        assert any(r["logger"].startswith("uvicorn") for r in records), text
    else:
        assert any("[info     ]" in x and "[uvicorn.error]" in x for x in lines), text
        assert not any(" INFO uvicorn" in x for x in lines)  # the old basicConfig shape


def test_a_published_event_logs_one_line_naming_it(out: StringIO, redis_private: Any) -> None:
    """The line's message stays the message (an extra named ``event`` once replaced it with the
    whole event dict, structlog's message key); type, id and subject are fields of their own."""
    import redis

    from worker.events import EventPublisher
    from worker.models import InputsReady

    configure_logging("json", "INFO", stream=out)
    client = redis.Redis.from_url(redis_private.url)
    data = InputsReady(execution_id="exec-log", project_id="p", files=1, bytes=3, seconds=0.1)
    event = EventPublisher(client, "haul:test-events", 100).publish(
        "haul.inputs.ready", "exec-log", data, "exec-log", "ready"
    )
    client.close()
    (line,) = [x for x in _lines(out) if x.get("event_id") == event["id"]]
    assert line["message"] == f"event haul.inputs.ready {event['id']}"
    assert line["event_type"] == "haul.inputs.ready" and line["subject"] == "exec-log"
