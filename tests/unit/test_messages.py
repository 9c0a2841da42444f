"""Messages are validated against the contract's models; problems name the field."""

from typing import Any

import pytest

from worker.errors import MessageError
from worker.models import PrepareInputs, Purge, StoreOutputs, validate_message

GOOD: dict[str, Any] = {
    "execution_id": "exec-0001",
    "project_id": "proj-42",
    "store": "default",
    "inputs": [
        {
            "name": "dataset",
            "urls": ["s3://bucket/mnist/train-labels.gz", "https://host/train-images.gz"],
            "filename": None,
            "keep_directories": "none",
            "optional": False,
        }
    ],
}


def _fields(payload: Any, model: Any = PrepareInputs) -> list[str]:
    with pytest.raises(MessageError) as info:
        validate_message(model, payload)
    return [e["field"] for e in info.value.errors]


def test_seed_message_validates() -> None:
    msg = validate_message(PrepareInputs, GOOD)
    assert msg.inputs[0].keep_directories == "none"


def test_store_is_optional_and_inputs_default_empty() -> None:
    msg = validate_message(PrepareInputs, {"execution_id": "e", "project_id": "p"})
    assert msg.store is None
    assert msg.inputs == []


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"execution_id": "../etc"}, "execution_id"),
        ({"execution_id": ""}, "execution_id"),
        ({"execution_id": "a" * 129}, "execution_id"),
        ({"project_id": "-x"}, "project_id"),
        ({"project_id": 42}, "project_id"),
    ],
)
def test_bad_ids(change: dict[str, Any], field: str) -> None:
    assert field in _fields({**GOOD, **change})


@pytest.mark.parametrize(
    ("input_change", "field"),
    [
        ({"name": "../up"}, "inputs.0.name"),
        ({"name": ".."}, "inputs.0.name"),
        ({"name": "a/b"}, "inputs.0.name"),
        ({"urls": []}, "inputs.0.urls"),
        ({"urls": ["ftp://host/x"]}, "inputs.0.urls"),
        ({"urls": ["file-without-scheme"]}, "inputs.0.urls"),
        ({"filename": "../x"}, "inputs.0.filename"),
        ({"filename": "a/b"}, "inputs.0.filename"),
        ({"keep_directories": "some"}, "inputs.0.keep_directories"),
        ({"surprise": 1}, "inputs.0.surprise"),
        # JSON true/false only: pydantic's lax mode would read each of these as a boolean
        ({"optional": "yes"}, "inputs.0.optional"),
        ({"optional": "false"}, "inputs.0.optional"),
        ({"optional": 1}, "inputs.0.optional"),
        ({"optional": None}, "inputs.0.optional"),
    ],
)
def test_bad_inputs(input_change: dict[str, Any], field: str) -> None:
    payload = {**GOOD, "inputs": [{**GOOD["inputs"][0], **input_change}]}
    assert field in _fields(payload)


def test_duplicate_input_names_are_refused() -> None:
    payload = {**GOOD, "inputs": [GOOD["inputs"][0], GOOD["inputs"][0]]}
    assert "inputs" in _fields(payload)


def test_not_an_object() -> None:
    assert _fields(["a", "list"]) == [""]
    assert _fields(None) == [""]


def test_outputs_and_purge_messages() -> None:
    assert validate_message(StoreOutputs, {"execution_id": "e", "project_id": "p"}).store is None
    assert "datum_ids" in _fields({"project_id": "p", "datum_ids": []}, Purge)
    assert "datum_ids.0" in _fields({"project_id": "p", "datum_ids": ["../x"]}, Purge)
