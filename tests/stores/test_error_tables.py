"""Every row of every backend's error table is reached from a real SDK exception.

Like httpx's ``test_httpcore_all_exceptions_mapped``: for each code and each status a table
names, the SDK's own exception carrying it goes through the backend's translation boundary and
comes out as the row's haul error. A row the translator cannot reach (shadowed by a check before
the table, or a code the SDK never hands over) fails here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from worker.errors import AlreadyExists, Changed, HaulError, TransientError
from worker.net.status import HTTP, ErrorTable, Op, Rule, http_status_error, parse_retry_after

Raise = Callable[[int, str, dict[str, str]], Exception]


def _s3(status: int, code: str, headers: dict[str, str]) -> Exception:
    import botocore.exceptions as bce

    meta = {"HTTPStatusCode": status, "HTTPHeaders": headers}
    return bce.ClientError({"Error": {"Code": code}, "ResponseMetadata": meta}, "HeadObject")


def _azure(status: int, code: str, headers: dict[str, str]) -> Exception:
    from azure.core.exceptions import HttpResponseError

    class Response:
        def __init__(self) -> None:
            self.status_code = status
            self.reason = "x"
            self.headers = headers

        def text(self) -> str:
            return ""

    exc = HttpResponseError(message="injected", response=Response())
    exc.error_code = code or None
    return exc


def _gcs(status: int, code: str, headers: dict[str, str]) -> Exception:
    import google.api_core.exceptions as gexc

    class Response:
        def __init__(self) -> None:
            self.headers = headers

    exc: Exception = gexc.from_http_status(status, "injected", response=Response())
    return exc


def _swift(status: int, code: str, headers: dict[str, str]) -> Exception:
    from swiftclient.exceptions import ClientException

    return ClientException("injected", http_status=status, http_response_headers=headers)


def _backends() -> Iterator[tuple[str, ErrorTable, Callable[[Any, str, Op], HaulError], Raise]]:
    from worker.stores import azure, gcs, s3, swift

    yield "s3", s3.ERRORS, s3._translate, _s3
    yield "azure", azure.ERRORS, azure._translate, _azure
    yield "gcs", gcs.ERRORS, gcs._translate, _gcs
    yield "swift", swift.ERRORS, swift._translate, _swift


def _rows(table: ErrorTable) -> Iterator[tuple[int, str, Rule]]:
    for code, rule in table.codes.items():
        yield 400, code, rule
    for status, rule in table.statuses.items():
        yield status, "", rule


BACKENDS = list(_backends())


@pytest.mark.parametrize("name,table,translate,make", BACKENDS, ids=[b[0] for b in BACKENDS])
def test_every_row_is_reached(
    name: str,
    table: ErrorTable,
    translate: Callable[[Any, str, Op], HaulError],
    make: Raise,
) -> None:
    """Each code and status of the backend's table, raised by its SDK, becomes that row's
    error for every kind of call (the create and read variants where a row has them)."""
    if name in ("gcs", "swift"):
        assert not table.codes  # these services answer with statuses only
    for status, code, rule in _rows(table):
        for op in ("other", "create", "read"):
            want = rule.for_op(op)  # type: ignore[arg-type]
            got = translate(make(status, code, {}), "store://x", op)  # type: ignore[arg-type]
            assert type(got) is want.error, (name, status, code, op, got)
            assert want.says in str(got)


@pytest.mark.parametrize("name,table,translate,make", BACKENDS, ids=[b[0] for b in BACKENDS])
def test_throttling_carries_retry_after(
    name: str,
    table: ErrorTable,
    translate: Callable[[Any, str, Op], HaulError],
    make: Raise,
) -> None:
    """A throttling answer's ``Retry-After`` reaches the engine as ``retry_after_s``."""
    code = {"s3": "SlowDown", "azure": "ServerBusy"}.get(name, "")
    status = 498 if name == "swift" else 503
    got = translate(make(status, code, {"Retry-After": "3"}), "store://x", "read")
    assert isinstance(got, TransientError) and got.retry_after_s == 3.0
    plain = translate(make(500, "", {}), "store://x", "read")
    assert isinstance(plain, TransientError) and plain.retry_after_s is None


def test_a_conditional_create_that_finds_the_key_taken_says_so() -> None:
    """412 is AlreadyExists on a create and Changed on a read, for the plain HTTP map too."""
    assert isinstance(http_status_error(412, "u", op="create"), AlreadyExists)
    assert isinstance(http_status_error(412, "u", op="read"), Changed)


def test_http_rows_and_fallbacks() -> None:
    """Every status row of the HTTP map is reached; an unlisted 5xx is temporary and an
    unlisted 4xx is a source error that is not retried."""
    for status, rule in HTTP.statuses.items():
        assert type(http_status_error(status, "u")) is rule.error
    assert isinstance(http_status_error(599, "u"), TransientError)
    other = http_status_error(418, "u")
    assert other.code == "source_error" and not other.retryable


def test_retry_after_forms() -> None:
    """Retry-After is delta-seconds or an HTTP date; nonsense is ignored; the wait is capped."""
    assert parse_retry_after("12") == 12.0
    assert parse_retry_after("Thu, 01 Jan 2037 00:00:10 GMT", now=lambda: 2114380800.0) == 10.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
    assert parse_retry_after("999999") == 600.0


def test_an_http_source_makes_one_request_and_passes_retry_after_up(tmp_path: Path) -> None:
    """A plain http(s) input answering 503 + Retry-After costs one request per call and says
    how long the server asked to wait; a 429 without the header says nothing."""
    from tests.support.httpserver import serve
    from worker.stores.http import HttpSource

    with serve(tmp_path) as srv:
        srv.put_file("/f.bin", b"data")
        http = HttpSource(allow_private=True, timeout_s=5.0)
        srv.faults.fail_next("/f.bin", n=1, status=503, headers={"Retry-After": "5"})
        with pytest.raises(TransientError) as caught:
            http.stat(srv.url("/f.bin"))
        assert caught.value.retry_after_s == 5.0
        srv.faults.fail_next("/f.bin", n=1, status=429)
        with pytest.raises(TransientError) as caught:
            http.read_first(srv.url("/f.bin"), 1024)
        assert caught.value.retry_after_s is None
        assert len(srv.requests_for("/f.bin")) == 2
        http.close()


def test_an_s3_request_refused_by_the_client_is_no_store_error() -> None:
    """botocore refuses an invalid bucket name before any request (``ParamValidationError``):
    one clear, permanent error that names the rule, not ``store_error: ParamValidationError``."""
    import boto3
    import botocore.exceptions as bce

    from worker.errors import UnsupportedURL
    from worker.stores.s3 import _translate

    client = boto3.client(
        "s3", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y"
    )
    with pytest.raises(bce.ParamValidationError) as info:
        client.head_object(Bucket="Bad Bucket!", Key="k")
    err = _translate(info.value, "s3://Bad Bucket!/k", "read")
    assert isinstance(err, UnsupportedURL)
    assert err.code == "unsupported_url"
    assert 'Invalid bucket name "Bad Bucket!"' in str(err)
    assert "\n" not in str(err) and len(str(err)) < 400
