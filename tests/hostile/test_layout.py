"""Where inputs would land: names from URLs that leave or hide, clashing paths, and folders or
files that someone planted as symlinks before haul ran (a real worker for all of them)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.hostile.conftest import Case, Rig, rig, served_next

PREPARE = "haul.prepare_inputs"
SECRET = "not haul's to read\n"


@pytest.fixture(scope="module")
def r(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    with rig(tmp_path_factory, "layout") as it:
        (it.www.root / "a").mkdir()
        (it.www.root / "a" / "one.txt").write_bytes(b"one")
        (it.www.root / "b").mkdir()
        (it.www.root / "b" / "one.txt").write_bytes(b"other one")
        yield it


def _prepare(case: Case, *inputs: dict[str, Any]) -> tuple[str, Any]:
    return case.run(PREPARE, {"execution_id": case.eid, "project_id": "p", "inputs": list(inputs)})


def _secret_intact(r: Rig) -> None:
    assert (r.outside / "secret.txt").read_text() == SECRET
    assert sorted(p.name for p in r.outside.iterdir()) == ["secret.txt"]


# (case id, URL path on the test server, keep_directories, the code of the failure)
NAMES = [
    ("encoded-dotdot", "/a/%2e%2e/%2e%2e/%2e%2e/one.txt", "full", "unsafe_path"),
    ("bidi-in-file-name", "/a/model%E2%80%AEgpj.exe", "none", "unsafe_path"),
    ("newline-in-file-name", "/a/two%0Alines.txt", "none", "unsafe_path"),
    ("nul-in-file-name", "/a/nul%00.txt", "none", "unsafe_path"),
    ("escape-in-folder-name", "/a%1B%5B31m/one.txt", "full", "unsafe_path"),
    ("segment-of-300-bytes", "/a/" + "n" * 300, "none", "unsafe_path"),
]


@pytest.mark.parametrize(
    ("path", "keep", "code"), [n[1:] for n in NAMES], ids=[n[0] for n in NAMES]
)
def test_names_from_urls_that_leave_or_hide_fail_the_input(
    r: Rig, path: str, keep: str, code: str
) -> None:
    """The file name a URL gives would leave ``inputs/<name>/`` or hide characters: the input
    fails before any byte moves."""
    case = Case(r)
    url = r.www.url(path)
    state, _ = _prepare(case, {"name": "x", "urls": [url], "keep_directories": keep})
    assert state == "FAILURE"
    event = case.failed()
    assert event["data"]["error"]["code"] == code, event
    assert event["data"]["input"] == "x"
    assert not list((case.exec_dir / "inputs").rglob("*.txt"))
    case.check_clean()
    served_next(r)


def test_two_urls_landing_on_one_path_fail_the_input(r: Rig) -> None:
    """``a/one.txt`` and ``b/one.txt`` with keep_directories none: one path, refused before
    either is fetched; the message says which URLs and how to fix it."""
    case = Case(r)
    urls = [r.www.url("/a/one.txt"), r.www.url("/b/one.txt")]
    state, _ = _prepare(case, {"name": "x", "urls": urls})
    assert state == "FAILURE"
    error = case.failed()["data"]["error"]
    assert error["code"] == "unsupported_url" and "keep_directories" in error["message"]
    assert not (case.exec_dir / "inputs" / "x" / "one.txt").exists()
    case.check_clean()
    served_next(r)


def test_filename_with_several_files_fails_and_one_object_named_twice_is_renamed(r: Rig) -> None:
    """``filename`` renames a single file: two URLs fail the input before either is fetched
    (the task's error names the input once); one URL given twice is one file, renamed."""
    case = Case(r)
    urls = [r.www.url("/a/one.txt"), r.www.url("/b/one.txt")]
    state, result = _prepare(case, {"name": "x", "urls": urls, "filename": "only.txt"})
    assert state == "FAILURE"
    assert str(result) == "input 'x': filename renames a single file, but the URLs give 2 files"
    event = case.failed()["data"]
    assert event["input"] == "x" and event["error"]["code"] == "unsupported_url"
    assert event["error"]["message"] == "filename renames a single file, but the URLs give 2 files"
    assert not (case.exec_dir / "inputs" / "x").exists() or not any(
        (case.exec_dir / "inputs" / "x").iterdir()
    )
    case.check_clean()

    twice = Case(r)
    url = r.www.url("/a/one.txt")
    state, summary = _prepare(twice, {"name": "x", "urls": [url, url], "filename": "only.txt"})
    assert state == "SUCCESS", summary
    assert [f["name"] for f in summary["inputs"]["x"]] == ["only.txt"]
    assert (twice.exec_dir / "inputs" / "x" / "only.txt").read_bytes() == b"one"
    served_next(r)


def test_one_url_renamed_onto_a_folder_of_another_fails(r: Rig) -> None:
    """``filename`` of one input cannot clash, but a file where another needs a folder does:
    ``a`` (a file) and ``a/one.txt`` under keep_directories full."""
    (r.www.root / "flat").mkdir(exist_ok=True)
    (r.www.root / "flat" / "a").write_bytes(b"a file")
    case = Case(r)
    urls = [r.www.url("/flat/a"), r.www.url("/flat/a/one.txt")]
    state, _ = _prepare(case, {"name": "x", "urls": urls, "keep_directories": "full"})
    assert state == "FAILURE"
    assert case.failed()["data"]["error"]["code"] == "unsupported_url"
    case.check_clean()
    served_next(r)


@pytest.mark.parametrize("task", ["haul.prepare_inputs", "haul.store_outputs"])
def test_a_symlinked_execution_folder_is_refused(r: Rig, task: str) -> None:
    """``executions/<id>`` planted as a symlink to a folder outside: inputs are not laid out
    there and nothing there is stored; the task fails with its event (unsafe_path)."""
    case = Case(r)
    target = r.outside / f"victim-{case.eid}"
    (target / "outputs").mkdir(parents=True)
    (target / "outputs" / "stolen.txt").write_text("someone else's")
    case.exec_dir.symlink_to(target, target_is_directory=True)
    try:
        if task == "haul.prepare_inputs":
            state, _ = _prepare(case, {"name": "x", "urls": [r.www.url("/a/one.txt")]})
            terminal: tuple[str, ...] = ("haul.inputs.ready", "haul.inputs.failed")
        else:
            state, _ = case.run(task, {"execution_id": case.eid, "project_id": "p"})
            terminal = ("haul.outputs.stored", "haul.outputs.failed")
        assert state == "FAILURE"
        event = case.failed(terminal)
        assert event["data"]["error"]["code"] in {"unsafe_path", "outputs_failed"}, event
        assert "symlink" in event["data"]["error"]["message"]
        assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*")) == [
            "outputs",
            "outputs/stolen.txt",
        ]
        assert not list((r.data_dir / "store").rglob("stolen.txt"))
    finally:
        case.exec_dir.unlink()
        for p in sorted(target.rglob("*"), reverse=True):
            p.rmdir() if p.is_dir() else p.unlink()
        target.rmdir()
    _secret_intact(r)
    served_next(r)


@pytest.mark.parametrize("planted", ["inputs", "config", "inputs/x"])
def test_a_symlinked_folder_inside_the_execution_is_refused(r: Rig, planted: str) -> None:
    """``inputs/``, ``config/`` or ``inputs/<name>/`` planted as a symlink leading out: the
    input fails with unsafe_path and nothing lands outside."""
    case = Case(r)
    link = case.exec_dir / planted
    link.parent.mkdir(parents=True)
    link.symlink_to(r.outside, target_is_directory=True)
    state, _ = _prepare(case, {"name": "x", "urls": [r.www.url("/a/one.txt")]})
    assert state == "FAILURE"
    error = case.failed()["data"]["error"]
    assert error["code"] == "unsafe_path", error
    _secret_intact(r)
    case.check_clean()
    served_next(r)


@pytest.mark.parametrize("planted", ["inputs/x/one.txt", "inputs/x/one.txt.haul-part", "haul.log"])
def test_a_symlink_planted_at_a_file_name_is_not_written_through(r: Rig, planted: str) -> None:
    """A symlink to a file outside, left where haul writes the input, its part file or
    haul.log: the file outside keeps its bytes, and the task ends with its event."""
    case = Case(r)
    link = case.exec_dir / planted
    link.parent.mkdir(parents=True)
    os.symlink(r.outside / "secret.txt", link)
    state, summary = _prepare(case, {"name": "x", "urls": [r.www.url("/a/one.txt")]})
    _secret_intact(r)
    events = case.outcome("haul.inputs.ready", "haul.inputs.failed")
    assert len(events) == 1, summary
    if state == "SUCCESS":
        assert (case.exec_dir / "inputs" / "x" / "one.txt").read_bytes() == b"one"
        assert not (case.exec_dir / "inputs" / "x" / "one.txt").is_symlink()
    else:
        assert events[0]["data"]["error"]["code"] not in {"internal_error"}, events
    case.check_clean()
    served_next(r)


def test_an_input_folder_full_of_a_pre_made_file_fails_cleanly(r: Rig) -> None:
    """A file planted where the input's folder must be: destination_error, not a crash."""
    case = Case(r)
    (case.exec_dir / "inputs").mkdir(parents=True)
    (case.exec_dir / "inputs" / "x").write_text("in the way")
    state, _ = _prepare(case, {"name": "x", "urls": [r.www.url("/a/one.txt")]})
    assert state == "FAILURE"
    assert case.failed()["data"]["error"]["code"] in {"destination_error", "unsafe_path"}
    case.check_clean()
    served_next(r)


def test_a_failure_with_a_planted_haul_log_is_reported_once(r: Rig) -> None:
    """A failing input whose haul.log is a planted symlink: one failure event (the input's
    own), not a second one with other data under the same id."""
    case = Case(r)
    case.exec_dir.mkdir()
    os.symlink(r.outside / "secret.txt", case.exec_dir / "haul.log")
    state, _ = _prepare(case, {"name": "x", "urls": [r.www.url("/a/missing.txt")]})
    assert state == "FAILURE"
    assert case.failed()["data"]["error"]["code"] == "not_found"
    _secret_intact(r)
    served_next(r)
