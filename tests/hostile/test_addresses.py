"""Every textual form of a loopback or private address, directly and behind a redirect, and
credentials inside URLs, against a real worker with ``allow_private_addresses = false``.

The worker runs ``tests.hostile.guarded_app``: the literal host ``127.0.0.1`` (the test
server) is the one "public" host, every other form goes through the real guard. A refused
form fails the input with ``forbidden_address`` before any request reaches the server.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.hostile.conftest import Case, Rig, rejected, rig, served_next

PREPARE = "haul.prepare_inputs"

FORMS = [
    "[::1]",
    "127.1",
    "0x7f000001",
    "0177.0.0.1",
    "2130706433",
    "127.000.000.001",
    "[::ffff:127.0.0.1]",
    "[0:0:0:0:0:ffff:7f00:1]",
    "0.0.0.0",
    "0",
    "[::]",
    "localhost",
    "localhost.",
    "LOCALHOST",
    "api.localhost",
    "169.254.169.254",
    "[::ffff:169.254.169.254]",
    "10.0.0.1",
    "192.168.1.1",
    "100.64.0.1",
    "[fe80::1]",
]
#: the forms the issue names, also tried behind a redirect from the "public" server
REDIRECTED = [
    "[::1]",
    "127.1",
    "0x7f000001",
    "0177.0.0.1",
    "[::ffff:127.0.0.1]",
    "0.0.0.0",
    "localhost.",
    "169.254.169.254",
]


@pytest.fixture(scope="module")
def r(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    with rig(tmp_path_factory, "addresses") as it:
        (it.www.root / "ok.txt").write_bytes(b"fine")
        yield it


def _prepare(case: Case, url: str) -> tuple[str, Any]:
    return case.run(
        PREPARE,
        {"execution_id": case.eid, "project_id": "p", "inputs": [{"name": "x", "urls": [url]}]},
    )


def _requests_for(r: Rig, path: str) -> int:
    return sum(1 for rec in r.www.requests if rec.path.startswith(path))


@pytest.mark.parametrize("host", FORMS)
def test_every_form_of_a_private_address_is_refused(r: Rig, host: str) -> None:
    """``http://<form>:<port>/`` fails with forbidden_address; the server sees no request."""
    case = Case(r)
    path = f"/direct-{case.eid}"
    state, _ = _prepare(case, f"http://{host}:{r.www.port}{path}")
    assert state == "FAILURE"
    error = case.failed()["data"]["error"]
    assert error["code"] == "forbidden_address", error
    assert "allow_private_addresses" in error["message"]
    assert _requests_for(r, path) == 0
    case.check_clean()
    served_next(r)


@pytest.mark.parametrize("host", REDIRECTED)
def test_a_redirect_to_a_private_address_is_refused(r: Rig, host: str) -> None:
    """The public server redirects to ``<form>``: the hop is judged like a first URL."""
    case = Case(r)
    path = f"/hop-{case.eid}"
    state, _ = _prepare(case, r.www.redirect_to_url(f"http://{host}:{r.www.port}{path}"))
    assert state == "FAILURE"
    error = case.failed()["data"]["error"]
    assert error["code"] == "forbidden_address", error
    assert _requests_for(r, path) == 0
    case.check_clean()
    served_next(r)


SECRET = "s3cr3t-Pa55"


def _nowhere_shown(r: Rig, case: Case, summary: Any) -> None:
    events = json.dumps(r.haul.events(case.eid))
    assert SECRET not in events
    assert SECRET not in r.haul.worker.log_text()
    assert SECRET not in json.dumps(summary, default=str)
    for f in case.exec_dir.rglob("*"):
        if f.is_file():
            assert SECRET not in f.read_text(errors="replace"), f


def test_userinfo_credentials_are_never_echoed(r: Rig) -> None:
    """A download through ``user:password@`` works, and the password is in no event, log
    line, haul.log, inputs.json or task result."""
    case = Case(r)
    url = r.www.url("/ok.txt", auth=("user", SECRET))
    state, summary = _prepare(case, url)
    assert state == "SUCCESS", summary
    assert (case.exec_dir / "inputs" / "x" / "ok.txt").read_bytes() == b"fine"
    assert case.outcome("haul.inputs.ready")
    _nowhere_shown(r, case, summary)
    case.check_clean()


def test_credentials_in_a_failing_url_are_not_echoed_by_the_failure(r: Rig) -> None:
    """A 404 and a refused address with credentials (userinfo and a presigned signature):
    the failure event names the URL without them."""
    for url in (
        r.www.url("/missing.txt", auth=("user", SECRET)) + f"?X-Amz-Signature={SECRET}",
        f"http://user:{SECRET}@127.1:{r.www.port}/ok.txt?sig={SECRET}",
    ):
        case = Case(r)
        state, summary = _prepare(case, url)
        assert state == "FAILURE"
        event = case.failed()
        assert event["data"]["url"] and "user" not in event["data"]["url"]
        _nowhere_shown(r, case, summary)
        case.check_clean()
    served_next(r)


def test_credentials_in_a_rejected_url_are_not_echoed(r: Rig) -> None:
    """A malformed URL (port out of range) with userinfo: the rejection shows it redacted."""
    case = Case(r)
    url = f"http://user:{SECRET}@example.invalid:99999/x"
    event = rejected(
        r,
        PREPARE,
        {"execution_id": case.eid, "project_id": "p", "inputs": [{"name": "x", "urls": [url]}]},
    )
    assert SECRET not in json.dumps(event)
    assert SECRET not in r.haul.worker.log_text()
    served_next(r)
