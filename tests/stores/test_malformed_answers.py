"""An answer whose body does not parse is a temporary error, for every backend.

A listing page or a metadata answer cut short on the way (the fault proxy's ``truncate`` and
``wrong_length``) reaches each SDK's parser: botocore's XML parser, azure-core's XML
deserializer, requests' ``json()`` under google-cloud-storage, ``json.loads`` in swiftclient.
Each backend's translation boundary must turn what that parser raises into
:class:`~worker.errors.TransientError` (the table's ``malformed`` row), so the engine's retry
policy tries again. Before, a Swift listing page cut from ``[]`` to ``[`` escaped as
``internal_error: JSONDecodeError`` and a cut Azure listing failed the input unretried.

Two layers: the real SDK's own exception, made by the real SDK parsing a cut body, through
``_translate``; and a real SDK call against a small local server that answers cut bodies
(every request of the test is to 127.0.0.1).
"""

from __future__ import annotations

import contextlib
import http.server
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from worker.errors import HaulError, TransientError
from worker.net.status import MALFORMED
from worker.stores.base import ObjectSource

#: a marker in every canned body: the server's text must never be repeated in a message
MARK = "body-text-7c1e"

#: (status, headers, body) for a request's path and query
Answer = tuple[int, dict[str, str], bytes]
Route = Callable[[str, str], Answer]


@contextlib.contextmanager
def canned(route: Route) -> Iterator[str]:
    """A local HTTP server answering every request with ``route(path, query)``."""

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            return None

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            path, _, query = self.path.partition("?")
            status, headers, body = route(path, query)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_HEAD = do_PUT = do_POST = _answer

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture(autouse=True)
def aws_creds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Made-up S3 credentials (the canned server checks no signature), no profile files."""
    for var in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAHAULMALFORMED001")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "haul-malformed-secret")


def _cut(body: bytes, at: int | None) -> bytes:
    return body[: len(body) // 2 if at is None else at]


# ---------------------------------------------------------------- the SDKs' own exceptions


def _s3_parser_error() -> Exception:
    from botocore.parsers import RestXMLParser

    try:
        RestXMLParser()._parse_xml_string_to_dom(f"<ListBucketResult><Name>{MARK}".encode())
    except Exception as exc:  # the SDK's own exception is what is tested
        return exc
    raise AssertionError("botocore parsed a cut XML body")


def _swift_json_error() -> Exception:
    from swiftclient.utils import parse_api_response

    try:
        parse_api_response({"content-type": "application/json; charset=utf-8"}, b"[")
    except Exception as exc:
        return exc
    raise AssertionError("swiftclient parsed '['")


def _gcs_json_error() -> Exception:
    import requests

    response = requests.models.Response()
    response._content = f'{{"kind": "storage#objects", "items": [{{"name": "{MARK}'.encode()
    response.status_code = 200
    try:
        response.json()
    except Exception as exc:
        return exc
    raise AssertionError("requests parsed a cut JSON body")


def _cut_utf8() -> Exception:
    try:
        "é".encode()[:1].decode()
    except UnicodeDecodeError as exc:
        return exc
    raise AssertionError("unreachable")


def _translators() -> Iterator[tuple[str, Callable[[Any, str, Any], HaulError], Exception]]:
    from worker.stores import azure, gcs, s3, swift

    yield "s3-xml", s3._translate, _s3_parser_error()
    yield "s3-utf8", s3._translate, _cut_utf8()
    yield "azure-utf8", azure._translate, _cut_utf8()
    yield "gcs-json", gcs._translate, _gcs_json_error()
    yield "gcs-utf8", gcs._translate, _cut_utf8()
    yield "swift-json", swift._translate, _swift_json_error()
    yield "swift-utf8", swift._translate, _cut_utf8()


TRANSLATORS = list(_translators())


@pytest.mark.parametrize("name,translate,exc", TRANSLATORS, ids=[t[0] for t in TRANSLATORS])
def test_the_malformed_row_is_reached_from_each_parsers_own_exception(
    name: str, translate: Callable[[Any, str, Any], HaulError], exc: Exception
) -> None:
    got = translate(exc, "store://x", "other")
    assert type(got) is TransientError, (name, got)
    assert MALFORMED.says in str(got) and type(exc).__name__ in str(got)
    assert MARK not in str(got)


# ---------------------------------------------------------------- real SDK calls


_S3_LISTING = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult '
    'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name><Prefix>p/</Prefix>'
    "<KeyCount>1</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated><Contents>"
    f"<Key>p/{MARK}</Key><LastModified>2024-01-01T00:00:00.000Z</LastModified>"
    "<ETag>&quot;abc&quot;</ETag><Size>3</Size><StorageClass>STANDARD</StorageClass>"
    "</Contents></ListBucketResult>"
).encode()

_AZURE_LISTING = (
    b"\xef\xbb\xbf"
    + (
        '<?xml version="1.0" encoding="utf-8"?><EnumerationResults ServiceEndpoint="x" '
        'ContainerName="c"><Prefix>p/</Prefix><MaxResults>5000</MaxResults><Blobs><Blob>'
        f"<Name>p/{MARK}</Name><Properties><Content-Length>3</Content-Length><Etag>0x1</Etag>"
        "<BlobType>BlockBlob</BlobType></Properties></Blob></Blobs><NextMarker />"
        "</EnumerationResults>"
    ).encode()
)

_GCS_LISTING = (
    f'{{"kind": "storage#objects", "items": [{{"kind": "storage#object", "name": "p/{MARK}", '
    '"bucket": "b", "generation": "1", "size": "3"}]}'
).encode()

_GCS_OBJECT = (
    f'{{"kind": "storage#object", "name": "p/{MARK}", "bucket": "b", "generation": "1", '
    '"size": "3", "md5Hash": "rL0Y20zC+Fzt72VPzMSk2A=="}'
).encode()


def _s3(base: str) -> ObjectSource:
    from worker.stores.s3 import S3Store

    return S3Store("s3", "b", endpoint_url=base, region="us-east-1")


def _azure(base: str) -> ObjectSource:
    from worker.stores.azure import AzureStore

    key = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
    conn = (
        f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={key};"
        f"BlobEndpoint={base}/devstoreaccount1;"
    )
    return AzureStore("az", "c", connection_string=conn)


def _gcs(base: str) -> ObjectSource:
    from worker.stores.gcs import GCSStore

    return GCSStore("gcs", "b", endpoint_url=base, anonymous=True)


def _swift(base: str) -> ObjectSource:
    from worker.stores.swift import SwiftAuth, SwiftStore

    return SwiftStore("sw", "c", SwiftAuth(auth_url=f"{base}/auth/v1.0", user="u", key="k"))


def _listing(
    body: bytes, content_type: str, swift_base: list[str] | None = None, last: bytes = b"[]"
) -> Route:
    """Answers a listing with ``body``. Swift lists until a page is empty: a request that
    names a ``marker`` (the page after the first) gets ``last``."""

    def route(path: str, query: str) -> Answer:
        if path == "/auth/v1.0":  # Swift's v1 auth: the storage URL and token in headers
            assert swift_base is not None
            url = f"{swift_base[0]}/v1/AUTH_test"
            return 200, {"X-Storage-Url": url, "X-Auth-Token": "tok"}, b""
        if "marker=" in query:
            return 200, {"Content-Type": content_type}, last
        return 200, {"Content-Type": content_type}, body

    return route


#: (backend, store factory, a whole answer to the listing, its content type)
LISTINGS = [
    ("s3", _s3, _S3_LISTING, "application/xml"),
    ("azure", _azure, _AZURE_LISTING, "application/xml"),
    ("gcs", _gcs, _GCS_LISTING, "application/json; charset=UTF-8"),
    ("swift", _swift, f'[{{"name": "p/{MARK}", "bytes": 3, "hash": "abc"}}]'.encode(),
     "application/json; charset=utf-8"),
]  # fmt: skip


@pytest.mark.parametrize("at", [None, 1, 2], ids=["half", "one-byte", "two-bytes"])
@pytest.mark.parametrize(
    "name,factory,body,content_type", LISTINGS, ids=[entry[0] for entry in LISTINGS]
)
def test_a_cut_listing_page_is_a_temporary_error(
    name: str,
    factory: Callable[[str], ObjectSource],
    body: bytes,
    content_type: str,
    at: int | None,
) -> None:
    """The whole answer lists one object; cut (half, or its first one or two bytes: a UTF-8
    byte-order mark split, a ``[`` of ``[]``), the SDK's parser fails and the backend says
    TransientError without repeating the body."""
    whole_base: list[str] = []
    with canned(_listing(body, content_type, whole_base)) as base:
        whole_base.append(base)
        store = factory(base)
        try:
            assert [o.key for o in store.list("p/")] == [f"p/{MARK}"]
        finally:
            store.close()
    cut = _cut(body, at)
    cut_base: list[str] = []
    with canned(_listing(cut, content_type, cut_base)) as base:
        cut_base.append(base)
        store = factory(base)
        try:
            with pytest.raises(TransientError) as caught:
                list(store.list("p/"))
        finally:
            store.close()
    assert MARK not in str(caught.value)


def test_a_swift_listing_whose_last_page_is_cut_from_brackets_to_one_is_a_temporary_error() -> None:
    """The CI failure of issue 11: the empty page that ends a Swift listing, ``[]``, cut to
    ``[`` (``wrong_length``), escaped as ``internal_error: JSONDecodeError: Expecting value:
    line 1 column 2 (char 1)``."""
    page = f'[{{"name": "p/{MARK}", "bytes": 3, "hash": "abc"}}]'.encode()
    base: list[str] = []
    with canned(_listing(page, "application/json; charset=utf-8", base, last=b"[")) as url:
        base.append(url)
        store = _swift(url)
        try:
            with pytest.raises(TransientError) as caught:
                list(store.list("p/"))
        finally:
            store.close()
    assert "JSONDecodeError" in str(caught.value)


def test_a_cut_gcs_metadata_answer_is_a_temporary_error() -> None:
    """GCS's stat is a JSON metadata GET (the others stat with HEAD, which has no body)."""
    with canned(lambda path, query: (200, {"Content-Type": "application/json"}, _GCS_OBJECT)) as b:
        store = _gcs(b)
        try:
            assert store.stat("p/obj").size == 3
        finally:
            store.close()
    cut = _cut(_GCS_OBJECT, None)
    with canned(lambda path, query: (200, {"Content-Type": "application/json"}, cut)) as b:
        store = _gcs(b)
        try:
            with pytest.raises(TransientError) as caught:
                store.stat("p/obj")
        finally:
            store.close()
    assert MALFORMED.says in str(caught.value) and MARK not in str(caught.value)


@contextlib.contextmanager
def raw_answer(answer: bytes) -> Iterator[str]:
    """A local TCP server that reads a request and answers every connection with ``answer``
    as it is (a status line http.server would never write), then closes."""
    import socket

    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                conn.recv(65536)
                conn.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/f.bin"
    finally:
        stop.set()
        thread.join(10)
        listener.close()


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 2x6 Partial\r\n\r\n",
        b"HTTP/1.1 206 Partial Content\r\nContent-Length: 4\r\nContent-Range: bytes 0-3/1",
        b"HTTP/1.1 206 Partial Content\r\nContent-Length: 4\r\nContent-Range: bytes q-3/10\r\n"
        b'ETag: "e"\r\n\r\ndata',
        b"HTTP/1.1 206 Partial Content\r\nContent-Length: 4\r\nContent-Range: bytes 5-8/10\r\n"
        b'ETag: "e"\r\n\r\ndata',
    ],
    ids=["garbled-status-line", "headers-cut", "garbled-content-range", "other-bytes"],
)
def test_a_garbled_http_answer_is_retried(answer: bytes) -> None:
    """The HTTP source has no body to parse, only a status line and headers: garbled or cut,
    they are a temporary error or an integrity error, both retried. A first range answered
    with other bytes than those asked for (another start) is refused too: it would have been
    placed at offset 0, a file of the right size and the wrong bytes."""
    from worker.stores.http import HttpSource

    with raw_answer(answer) as url:
        http = HttpSource(allow_private=True, timeout_s=5.0)
        try:
            with pytest.raises(HaulError) as caught:
                _, ctx = http.read_first(url, 1024)
                ctx.stream.close()
        finally:
            http.close()
    assert caught.value.retryable, caught.value
    assert type(caught.value).__name__ in ("TransientError", "IntegrityError")
