"""Messages of the wrong shape, size, serializer or characters, sent to a real worker.

Each is refused with ``haul.message.rejected`` naming the field, nothing is written (the
execution folder is never made), and the worker serves the next message.
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection, Exchange, Producer

from tests.hostile.conftest import Case, Rig, rejected, rig, served_next
from tests.integration.conftest import new_id
from worker.errors import SHOWN_MAX_CHARS

PREPARE = "haul.prepare_inputs"
MB5 = 5 * 1024 * 1024


@pytest.fixture(scope="module")
def r(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    with rig(tmp_path_factory, "messages") as it:
        yield it


def _msg(eid: str, **change: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "execution_id": eid,
        "project_id": "proj",
        "inputs": [{"name": "data", "urls": ["https://example.invalid/x.bin"]}],
    }
    return {**base, **change}


def _input(**change: Any) -> dict[str, Any]:
    return {"name": "data", "urls": ["https://example.invalid/x.bin"], **change}


BIDI = "\u202e"  # RIGHT-TO-LEFT OVERRIDE: "model\u202egpj.exe" shows as "modelexe.jpg"

# (case id, how the message differs from a good one, the field the rejection names)
SHAPES: list[tuple[str, dict[str, Any], str]] = [
    ("unknown-field", {"surprise": True}, "surprise"),
    ("inputs-not-a-list", {"inputs": {"name": "data"}}, "inputs"),
    ("inputs-a-string", {"inputs": "data"}, "inputs"),
    ("input-unknown-field", {"inputs": [_input(mode="fast")]}, "inputs.0.mode"),
    ("empty-urls", {"inputs": [_input(urls=[])]}, "inputs.0.urls"),
    ("urls-a-string", {"inputs": [_input(urls="https://example.invalid/x")]}, "inputs.0.urls"),
    ("url-not-a-string", {"inputs": [_input(urls=[{"url": "x"}])]}, "inputs.0.urls.0"),
    ("nul-in-name", {"inputs": [_input(name="da\x00ta")]}, "inputs.0.name"),
    ("bidi-in-name", {"inputs": [_input(name=f"data{BIDI}vsc")]}, "inputs.0.name"),
    ("dotdot-name", {"inputs": [_input(name="..")]}, "inputs.0.name"),
    ("dot-name", {"inputs": [_input(name=".")]}, "inputs.0.name"),
    ("slashed-name", {"inputs": [_input(name="a/b")]}, "inputs.0.name"),
    ("nul-in-filename", {"inputs": [_input(filename="x\x00.bin")]}, "inputs.0.filename"),
    ("bidi-in-filename", {"inputs": [_input(filename=f"model{BIDI}gpj.exe")]}, "inputs.0.filename"),
    ("newline-in-filename", {"inputs": [_input(filename="a\nb.bin")]}, "inputs.0.filename"),
    ("absolute-filename", {"inputs": [_input(filename="/etc/passwd")]}, "inputs.0.filename"),
    ("slashed-filename", {"inputs": [_input(filename="../../x.bin")]}, "inputs.0.filename"),
    ("backslashed-filename", {"inputs": [_input(filename="..\\x.bin")]}, "inputs.0.filename"),
    ("dot-filename", {"inputs": [_input(filename=".")]}, "inputs.0.filename"),
    ("dotdot-filename", {"inputs": [_input(filename="..")]}, "inputs.0.filename"),
    ("optional-a-string", {"inputs": [_input(optional="yes")]}, "inputs.0.optional"),
    ("duplicate-names", {"inputs": [_input(), _input()]}, "inputs"),
    ("traversing-execution-id", {"execution_id": "../../etc"}, "execution_id"),
    ("bidi-execution-id", {"execution_id": f"exec{BIDI}1"}, "execution_id"),
    ("crlf-in-url", {"inputs": [_input(urls=["https://h/x\r\nX-Evil: 1"])]}, "inputs.0.urls"),
    ("unsupported-scheme", {"inputs": [_input(urls=["ftp://h/x"])]}, "inputs.0.urls"),
    ("wildcard-in-bucket", {"inputs": [_input(urls=["s3://b*/x.bin"])]}, "inputs.0.urls"),
    ("port-out-of-range", {"inputs": [_input(urls=["http://h:99999/x"])]}, "inputs.0.urls"),
    ("unknown-store", {"store": "nowhere"}, "store"),
    ("lone-surrogate-in-url", {"inputs": [_input(urls=["https://h/x\udc80"])]}, ""),
    ("ten-thousand-inputs", {"inputs": [_input(name=f"i{n}") for n in range(10_000)]}, "inputs"),
]


@pytest.mark.parametrize(("change", "field"), [c[1:] for c in SHAPES], ids=[c[0] for c in SHAPES])
def test_wrong_shapes_are_rejected_naming_the_field(
    r: Rig, change: dict[str, Any], field: str
) -> None:
    """Each malformed message gets one rejection naming the field; nothing is laid out."""
    case = Case(r)
    event = rejected(r, PREPARE, _msg(case.eid, **change))
    fields = [e["field"] for e in event["data"]["errors"]]
    assert field in fields, fields
    assert len(event["data"]["errors"]) <= 21  # bounded, even for 10 000 bad inputs
    assert not case.exec_dir.exists()
    case.check_clean()
    served_next(r)


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ([["a", "list"]], {}),
        ([None], {}),
        ([{"execution_id": "e"}, {"x": 1}], {}),
        ([{}], {"a": 1}),
    ],
    ids=["a-list-for-the-object", "null", "two-objects", "args-and-kwargs"],
)
def test_not_one_object_is_rejected(r: Rig, args: list[Any], kwargs: dict[str, Any]) -> None:
    """A list, null, two positional objects, or args plus kwargs: not the one JSON object."""
    case = Case(r)
    event = rejected(r, PREPARE, None, args=args, kwargs=kwargs)
    assert event["data"]["errors"][0]["field"] == ""
    case.check_clean()
    served_next(r)


def test_the_object_as_keyword_arguments_is_the_same_message(r: Rig) -> None:
    """kwargs alone are the object spelled another way (documented): it runs like args=[obj]."""
    name = "kw.txt"
    (r.www.root / name).write_bytes(b"kw")
    case = Case(r)
    message = {"execution_id": case.eid, "project_id": "p",
               "inputs": [{"name": "k", "urls": [r.www.url(name)]}]}  # fmt: skip
    result = r.haul.client.send_task(PREPARE, kwargs=message, queue="haul.inputs")
    deadline = time.monotonic() + 60
    while result.state not in ("SUCCESS", "FAILURE") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert result.state == "SUCCESS" and result.result["status"] == "ready", result.result
    assert len(case.outcome("haul.inputs.ready")) == 1
    case.check_clean()


def test_a_five_megabyte_url_is_rejected_with_bounded_messages(r: Rig) -> None:
    """A 5 MB URL is refused by length; the event, the task result and every worker log line
    show a few hundred characters of it and say it was cut."""
    case = Case(r)
    url = "https://example.invalid/" + "a" * (MB5 - 24)
    log_start = len(r.haul.worker.log_text())
    event = rejected(r, PREPARE, _msg(case.eid, inputs=[_input(urls=[url])]))
    assert len(event["data"]["reason"]) < 2 * SHOWN_MAX_CHARS
    assert "5242880" in event["data"]["reason"]
    assert all(len(e["problem"]) < 2 * SHOWN_MAX_CHARS for e in event["data"]["errors"])
    served_next(r)
    new_lines = r.haul.worker.log_text()[log_start:].splitlines()
    assert new_lines and max(len(line) for line in new_lines) < 8 * SHOWN_MAX_CHARS
    case.check_clean()


def test_a_five_megabyte_store_name_is_cut_where_it_is_echoed(r: Rig) -> None:
    """A value echoed into the reason (the unknown store's name) is cut, saying so."""
    case = Case(r)
    event = rejected(r, PREPARE, _msg(case.eid, store="s" * MB5))
    reason = event["data"]["reason"]
    assert len(reason) < 2 * SHOWN_MAX_CHARS and "characters, cut)" in reason
    assert len(event["data"]["errors"][0]["problem"]) < 2 * SHOWN_MAX_CHARS
    case.check_clean()
    served_next(r)


class _Marker:
    """Unpickling this creates a file: proof that a pickle was (or was not) executed."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


def test_a_pickle_message_is_refused_without_being_executed(r: Rig, tmp_path: Path) -> None:
    """The JSON-only worker never unpickles: the marker file is not created, the refusal is an
    event naming the content type, and the worker serves the next message."""
    marker = tmp_path / "unpickled"
    body = pickle.dumps(([_Marker(marker)], {}, {"callbacks": None, "errbacks": None}))
    task_id = new_id("pickle")
    headers = {"lang": "py", "task": PREPARE, "id": task_id, "root_id": task_id,
               "parent_id": None, "group": None, "argsrepr": "", "kwargsrepr": ""}  # fmt: skip
    with Connection(r.haul.redis_url) as conn:
        Producer(conn).publish(
            body,
            exchange=Exchange("haul.inputs", type="direct"),
            routing_key="haul.inputs",
            headers=headers,
            content_type="application/x-python-serialize",
            content_encoding="binary",
        )
    deadline = time.monotonic() + 30
    found: list[dict[str, Any]] = []
    while not found and time.monotonic() < deadline:
        found = [
            e
            for e in r.haul.events(type_="haul.message.rejected")
            if "x-python-serialize" in e["data"]["reason"]
        ]
        time.sleep(0.05)
    assert found, r.haul.log_tail()
    assert found[0]["data"]["task"] == PREPARE
    assert not marker.exists()
    served_next(r)
    assert not marker.exists()


def test_purging_unknown_or_foreign_datums_publishes_an_outcome(r: Rig) -> None:
    """A purge naming only unknown ids, or another project's, still ends with one
    ``haul.purge.done`` listing them as unknown; a redelivery publishes the same event id."""
    name = "owned.txt"
    (r.www.root / name).write_bytes(b"mine")
    eid = new_id()
    out = r.haul.exec_dir(eid) / "outputs"
    out.mkdir(parents=True)
    (out / "result.txt").write_bytes(b"result")
    state, summary = r.haul.run("haul.store_outputs", {"execution_id": eid, "project_id": "owner"})
    assert state == "SUCCESS", summary
    theirs = summary["datums"][0]["datum_id"]
    unknown = "0" * 32
    message = {"project_id": "intruder", "datum_ids": [unknown, theirs]}

    def done() -> list[dict[str, Any]]:
        return [
            e for e in r.haul.events(type_="haul.purge.done")
            if e["data"]["project_id"] == "intruder"
        ]  # fmt: skip

    state, summary = r.haul.run("haul.purge", message)
    assert state == "SUCCESS" and summary["unknown"] == [unknown, theirs]
    assert [e["data"] for e in done()] == [
        {"project_id": "intruder", "purged": [], "unknown": [unknown, theirs]}
    ]
    assert not r.haul.events(type_="haul.datum.purged")
    assert r.haul.run("haul.purge", message)[0] == "SUCCESS"
    assert len({e["id"] for e in done()}) == 1 and len(done()) == 2
    # The owner's datum is untouched.
    store_file = r.data_dir / "store" / summary_key(r, theirs)
    assert store_file.read_bytes() == b"result"
    served_next(r)


def summary_key(r: Rig, datum_id: str) -> str:
    import json

    record = r.haul.r.get(f"haul:datum:{datum_id}")
    assert record is not None
    return str(json.loads(record)["key"])


def test_too_many_purge_ids_are_rejected(r: Rig) -> None:
    """A purge may name at most 10 000 datums (its outcome event lists each one)."""
    event = rejected(r, "haul.purge", {"project_id": "p", "datum_ids": ["a"] * 10_001})
    assert event["data"]["errors"][0]["field"] == "datum_ids"
    served_next(r)
