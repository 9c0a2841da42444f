"""What a hostile program can leave in ``outputs/``: special files, links leading out, names
that hide characters, and sidecars that are invalid or lie. A real worker stores each set;
every refused path gets ``haul.output.refused`` with its reason, everything else is stored,
nothing outside ``outputs/`` reaches the store, and the worker serves the next message."""

from __future__ import annotations

import json
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.hostile.conftest import TERMINAL_OUTPUTS, Case, Rig, rig, served_next

STORE = "haul.store_outputs"


@pytest.fixture(scope="module")
def r(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    with rig(tmp_path_factory, "outputs") as it:
        yield it


def _outputs(case: Case) -> Path:
    out = case.exec_dir / "outputs"
    out.mkdir(parents=True)
    (out / "good.txt").write_bytes(b"a good output")
    return out


def _store(case: Case) -> tuple[dict[str, Any], dict[str, str], dict[str, Any]]:
    """Run store_outputs; (its stored event's data, {path: refusal reason}, {path: datum})."""
    state, summary = case.run(STORE, {"execution_id": case.eid, "project_id": "p"})
    assert state == "SUCCESS", summary
    done = case.outcome(*TERMINAL_OUTPUTS)
    assert [e["type"] for e in done] == ["haul.outputs.stored"], done
    refused = {e["data"]["path"]: e["data"]["reason"] for e in case.outcome("haul.output.refused")}
    stored = {e["data"]["path"]: e["data"] for e in case.outcome("haul.output.stored")}
    return done[0]["data"], refused, stored


def _store_holds(r: Rig, content: bytes) -> bool:
    return any(
        p.is_file() and p.stat().st_size == len(content) and p.read_bytes() == content
        for p in (r.data_dir / "store").rglob("*")
    )


def _finish(r: Rig, case: Case, stored: dict[str, Any]) -> None:
    assert "good.txt" in stored  # the legitimate output is stored beside every refusal
    assert not _store_holds(r, (r.outside / "secret.txt").read_bytes())
    case.check_clean()
    served_next(r)


def test_a_fifo_is_refused_without_blocking(r: Rig) -> None:
    """Opening a FIFO would block forever; it is refused from its lstat."""
    case = Case(r)
    out = _outputs(case)
    os.mkfifo(out / "pipe")
    _, refused, stored = _store(case)
    assert refused == {"pipe": "not a regular file"}
    _finish(r, case, stored)


def test_a_unix_socket_is_refused(r: Rig) -> None:
    """A listening socket in outputs/ is not a file to store."""
    case = Case(r)
    out = _outputs(case)
    # Short relative name: a socket path is limited to about 108 bytes.
    cwd = Path.cwd()
    os.chdir(out)
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind("sock")
    finally:
        os.chdir(cwd)
    try:
        _, refused, stored = _store(case)
    finally:
        sock.close()
    assert refused == {"sock": "not a regular file"}
    _finish(r, case, stored)


def test_a_device_node_is_refused(r: Rig) -> None:
    """A character device (``/dev/zero``'s numbers) would be read forever; it is refused."""
    if os.geteuid() != 0:
        pytest.skip("making a device node needs root")
    case = Case(r)
    out = _outputs(case)
    os.mknod(out / "zero", 0o644 | stat.S_IFCHR, os.makedev(1, 5))
    _, refused, stored = _store(case)
    assert refused == {"zero": "not a regular file"}
    _finish(r, case, stored)


def test_a_hard_link_to_a_file_outside_is_refused(r: Rig) -> None:
    """``ln ../outside/secret.txt outputs/loot``: the same inode as a file outside, refused;
    two names of one file inside outputs/ are both stored."""
    case = Case(r)
    out = _outputs(case)
    os.link(r.outside / "secret.txt", out / "loot")
    (out / "inner.txt").write_bytes(b"linked twice inside")
    os.link(out / "inner.txt", out / "inner-again.txt")
    _, refused, stored = _store(case)
    assert refused == {"loot": "a hard link to a file outside outputs/; copy it instead"}
    assert {"inner.txt", "inner-again.txt"} <= set(stored)
    _finish(r, case, stored)


def test_symlinks_to_files_and_folders_are_refused(r: Rig) -> None:
    """A symlink to a file outside, to a folder outside, and to a file inside: none followed."""
    case = Case(r)
    out = _outputs(case)
    os.symlink(r.outside / "secret.txt", out / "secret-link")
    os.symlink(r.outside, out / "folder-link", target_is_directory=True)
    os.symlink("good.txt", out / "inner-link")
    _, refused, stored = _store(case)
    assert refused == {
        "secret-link": "a symlink; not followed",
        "folder-link": "a symlink to a folder; not followed",
        "inner-link": "a symlink; not followed",
    }
    _finish(r, case, stored)


def test_a_symlinked_outputs_folder_fails_the_task(r: Rig) -> None:
    """``outputs`` itself a symlink to a folder outside: outputs.failed, nothing stored."""
    case = Case(r)
    case.exec_dir.mkdir()
    (case.exec_dir / "outputs").symlink_to(r.outside, target_is_directory=True)
    state, _ = case.run(STORE, {"execution_id": case.eid, "project_id": "p"})
    assert state == "FAILURE"
    assert case.failed(TERMINAL_OUTPUTS)["data"]["error"]["code"] == "outputs_failed"
    assert not _store_holds(r, (r.outside / "secret.txt").read_bytes())
    case.check_clean()
    served_next(r)


@pytest.mark.parametrize(
    ("name", "hidden"),
    [("model\u202egpj.exe", "U+202E"), ("two\nlines.txt", "U+000A"), ("bell\x07.txt", "U+0007")],
    ids=["bidi-override", "newline", "bell"],
)
def test_output_names_with_hidden_characters_are_refused(r: Rig, name: str, hidden: str) -> None:
    """A name that shows as something else (or breaks lines) is refused, saying which
    character; the other outputs are stored."""
    case = Case(r)
    out = _outputs(case)
    (out / name).write_bytes(b"hidden")
    _, refused, stored = _store(case)
    assert list(refused) == [name] and hidden in refused[name]
    _finish(r, case, stored)


SIDECARS: list[tuple[str, bytes, str]] = [
    ("not-json", b"{tags: [", "not valid JSON"),
    ("not-utf8", b'{"a": "\xff"}', "not valid JSON"),
    ("an-array", b'["valohai.tags"]', "must be a JSON object"),
    ("tags-a-string", b'{"valohai.tags": "prod"}', "valohai.tags must be a list of strings"),
    ("tags-of-numbers", b'{"valohai.tags": [1, 2]}', "valohai.tags must be a list of strings"),
    ("alias-a-number", b'{"valohai.alias": 7}', "valohai.alias must be a string"),
    ("nan", b'{"score": NaN}', "NaN is not a JSON number"),
    ("nested-too-deep", b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ("two-megabytes", b'{"pad": "' + b"x" * (2 * 1024 * 1024) + b'"}', "larger than 1048576"),
]


@pytest.mark.parametrize(
    ("content", "problem"), [s[1:] for s in SIDECARS], ids=[s[0] for s in SIDECARS]
)
def test_invalid_or_lying_sidecars_are_refused_and_the_file_is_stored(
    r: Rig, content: bytes, problem: str
) -> None:
    """The sidecar is refused with its problem; its file is stored as a datum without it."""
    case = Case(r)
    out = _outputs(case)
    (out / "good.txt.metadata.json").write_bytes(content)
    _, refused, stored = _store(case)
    assert list(refused) == ["good.txt.metadata.json"]
    assert problem in refused["good.txt.metadata.json"], refused
    assert stored["good.txt"]["tags"] == []
    _finish(r, case, stored)


def test_a_symlinked_sidecar_is_not_followed(r: Rig) -> None:
    """A sidecar that is a symlink to a file outside is refused as a symlink, not read."""
    case = Case(r)
    out = _outputs(case)
    (r.outside / "tags.json").write_text(json.dumps({"valohai.tags": ["stolen"]}))
    try:
        os.symlink(r.outside / "tags.json", out / "good.txt.metadata.json")
        _, refused, stored = _store(case)
    finally:
        (r.outside / "tags.json").unlink()
    assert refused == {"good.txt.metadata.json": "a symlink; not followed"}
    assert stored["good.txt"]["tags"] == []
    _finish(r, case, stored)


def test_a_sidecar_without_its_file_is_stored_as_an_output(r: Rig) -> None:
    """An orphan sidecar names no file: it is an ordinary output, so nothing is lost."""
    case = Case(r)
    out = _outputs(case)
    (out / "gone.bin.metadata.json").write_text(json.dumps({"valohai.tags": ["x"]}))
    _, refused, stored = _store(case)
    assert not refused and "gone.bin.metadata.json" in stored
    _finish(r, case, stored)
