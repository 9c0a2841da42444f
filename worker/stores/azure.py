"""Azure Blob Storage stores (azure-storage-blob, sync client).

- Credentials: the connection string from the store's secrets (``connection_string``), else
  ``account_url`` with ``DefaultAzureCredential`` (azure-identity, imported only then).
- ``stat`` is Get Blob Properties; ``md5`` is the blob's Content-MD5 when one is stored (single-shot
  uploads, and block uploads that set it, as :meth:`AzureStore.create` does).
- Reads are ranged downloads pinned with ``etag`` + ``MatchConditions.IfNotModified``: a
  replaced blob answers 412, raised as :class:`~worker.errors.Changed`.
- ``create`` never overwrites: ``upload_blob(overwrite=False)`` for small files, parallel
  ``stage_block`` + ``commit_block_list(match_condition=IfMissing)`` for large ones, with the
  file's md5 set as the blob's Content-MD5. Azure answers 409 BlobAlreadyExists (not 412):
  :class:`~worker.errors.AlreadyExists`.

The SDK's own retries are off and the store makes each call once: a transient error goes up
as :class:`~worker.errors.TransientError` to the engine's retry policy. SDK exceptions are
translated in :func:`_translate` only, through the module's ``ERRORS`` table.
"""

from __future__ import annotations

import base64
import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field

from worker.errors import (
    AccessDenied,
    AlreadyExists,
    HaulError,
    IntegrityError,
    MissingExtra,
    NotFound,
    StoreError,
    TransientError,
)
from worker.net.status import HTTP_STATUSES, ErrorTable, Op, Rule, header_retry_after
from worker.stores._parted import Part, plan_parts, upload_parts
from worker.stores._sdk import SdkStore
from worker.stores._stream import CountedStream, range_end
from worker.stores.base import ObjectInfo, StreamContext
from worker.stores.plugin import (
    DEFAULT_TUNING,
    StoreConfigBase,
    StoreSecrets,
    StoreTuning,
    StoreType,
)

if TYPE_CHECKING:
    from worker.urls import ParsedURL

log = logging.getLogger(__name__)

MiB = 1024 * 1024
MAX_BLOCKS = 50_000

_DENIED = Rule(AccessDenied, "access denied")
_BAD_DIGEST = Rule(IntegrityError, "the server rejected the checksum")
_BUSY = Rule(TransientError, "the service is busy")
_TAKEN = Rule(AlreadyExists, "the blob already exists")

#: Azure Blob error codes over the status ladder; 409 on a create is a taken name
ERRORS = ErrorTable(
    codes={
        "ContainerNotFound": Rule(NotFound, "the container does not exist"),
        "BlobNotFound": Rule(NotFound, "no such blob"),
        "AuthenticationFailed": _DENIED, "AuthorizationFailure": _DENIED,
        "AuthorizationPermissionMismatch": _DENIED,
        "BlobAlreadyExists": _TAKEN,
        "ConditionNotMet": HTTP_STATUSES[412],
        "Md5Mismatch": _BAD_DIGEST, "InvalidMd5": _BAD_DIGEST, "Crc64Mismatch": _BAD_DIGEST,
        "ServerBusy": _BUSY, "OperationTimedOut": _BUSY, "InternalError": _BUSY,
    },
    statuses={**HTTP_STATUSES, 409: Rule(StoreError, "conflict", on_create=_TAKEN)},
)  # fmt: skip


def _translate(exc: Any, where: str, op: Op) -> HaulError:
    """The one place azure-core exceptions become haul errors (status and code only)."""
    from azure.core.exceptions import (
        ClientAuthenticationError,
        DecodeError,
        DeserializationError,
        IncompleteReadError,
        ServiceRequestError,
        ServiceResponseError,
    )

    if isinstance(exc, DecodeError | DeserializationError | UnicodeDecodeError):
        # An XML answer (a listing page) cut short or garbled. DecodeError carries the 200 of
        # the answer, which the status ladder would make a plain, unretried StoreError; a cut
        # UTF-8 byte-order mark reaches us as a bare UnicodeDecodeError.
        return ERRORS.malformed(where, exc)
    if isinstance(exc, IncompleteReadError):
        return IntegrityError(f"{where}: the body ended early")
    if isinstance(exc, ServiceRequestError | ServiceResponseError):
        return TransientError(f"{where}: connection failed ({type(exc).__name__})")
    status = int(getattr(exc, "status_code", None) or 0)
    raw_code = getattr(exc, "error_code", None) or ""
    code = str(getattr(raw_code, "value", raw_code))  # a str, or a StorageErrorCode enum
    # The message is only inspected, never repeated: it can quote the request's signature.
    says_md5 = "md5" in str(getattr(exc, "message", "") or "").lower()
    if status == 400 and says_md5 and code not in ERRORS.codes:  # azurite: InvalidOperation
        return IntegrityError(f"{where}: the server rejected the checksum (HTTP 400)")
    if not status and isinstance(exc, ClientAuthenticationError):
        return AccessDenied(f"{where}: no usable credentials ({type(exc).__name__})")
    headers = getattr(getattr(exc, "response", None), "headers", None)
    return ERRORS.error(
        where, status=status, code=code, op=op, retry_after_s=header_retry_after(headers)
    )


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _default_credential() -> Any:
    try:
        from azure.identity import DefaultAzureCredential
    except ImportError:
        raise MissingExtra(
            "azure (account_url without a connection string)", "azure", "azure.identity"
        ) from None
    return DefaultAzureCredential()


def _from_connection_string(name: str, connection_string: str, opts: dict[str, Any]) -> Any:
    """The service client of a connection string; one that does not parse is a credentials
    problem named as such (the SDK raises a bare ValueError, with a fixed text)."""
    from azure.storage.blob import BlobServiceClient

    try:
        return BlobServiceClient.from_connection_string(connection_string, **opts)
    except ValueError:
        raise AccessDenied(
            f"azure store {name!r}: no usable credentials (the connection string is malformed)"
        ) from None


class AzureStore(SdkStore):
    """One container (and key prefix) of an Azure storage account."""

    @property
    def sdk_errors(self) -> tuple[type[BaseException], ...]:
        from azure.core.exceptions import AzureError, DeserializationError

        # DeserializationError and UnicodeDecodeError are ValueErrors, not AzureErrors: both
        # come from an answer's body that does not parse.
        return (AzureError, DeserializationError, UnicodeDecodeError)

    def _translate(self, exc: Any, where: str, op: Op) -> HaulError:
        return _translate(exc, where, op)

    def __init__(
        self,
        name: str,
        container: str,
        *,
        prefix: str = "",
        connection_string: str | None = None,
        account_url: str | None = None,
        credential: Any = None,
        api_version: str | None = None,
        tuning: StoreTuning = DEFAULT_TUNING,
        page_size: int = 5000,
    ) -> None:
        self.name = name
        self.container = container
        self.prefix = prefix.strip("/")
        self.multipart_threshold_bytes = tuning.multipart_threshold_bytes
        self.part_size_bytes = tuning.part_size_bytes
        self.concurrency = max(1, tuning.concurrency)
        self.page_size = page_size
        opts: dict[str, Any] = {
            "retry_total": 0,
            # http_timeout_s, not azure-core's 300 s read timeout: a stall is a retried timeout
            "connection_timeout": min(tuning.timeout_s, 15.0),
            "read_timeout": tuning.timeout_s,
            "max_single_get_size": 32 * MiB,
            "max_chunk_get_size": 32 * MiB,
            "max_single_put_size": max(tuning.multipart_threshold_bytes, 1),
            "max_block_size": tuning.part_size_bytes,
        }
        if api_version:
            opts["api_version"] = api_version
        from azure.storage.blob import BlobServiceClient

        with self._sdk(""):
            if connection_string:
                service = _from_connection_string(name, connection_string, opts)
            elif account_url:
                cred = credential if credential is not None else _default_credential()
                service = BlobServiceClient(account_url, credential=cred, **opts)
            else:
                raise StoreError(f"azure store {name!r}: needs a connection string or account_url")
        self.account = str(service.account_name)
        self._service = service
        self._container = service.get_container_client(container)

    # -- the translation boundary ------------------------------------------------------------

    def _where(self, key: str) -> str:
        if not hasattr(self, "account"):  # an error while connecting, before the account is known
            return f"azure store {self.name!r}"
        return self.uri(key) if key else f"azure://{self.account}/{self.container}"

    def _blob(self, key: str) -> Any:
        return self._container.get_blob_client(key)

    # -- ObjectSource ------------------------------------------------------------------------

    def uri(self, key: str) -> str:
        return f"azure://{self.account}/{self.container}/{key}"

    def stat(self, key: str) -> ObjectInfo:
        props = self._call(lambda: self._blob(key).get_blob_properties(), key)
        return self._info(key, props)

    @staticmethod
    def _info(key: str, props: Any) -> ObjectInfo:
        raw_md5 = props.content_settings.content_md5 if props.content_settings else None
        md5 = bytes(raw_md5).hex() if raw_md5 else None
        note = "md5: Content-MD5" if md5 else "none: the blob has no Content-MD5 (block upload)"
        etag = str(props.etag) if props.etag else None
        return ObjectInfo(
            key=key,
            size=int(props.size),
            etag=etag.strip('"') if etag else None,
            version=etag,
            last_modified=_iso(props.last_modified),
            md5=md5,
            checksum_note=note,
            extra={"version_id": str(props.version_id)} if props.version_id else {},
        )

    def read(
        self, key: str, *, start: int = 0, length: int | None = None, pin: ObjectInfo | None = None
    ) -> StreamContext:
        info = pin or self.stat(key)
        end = range_end(start, length, info.size)
        if end == start:
            return StreamContext(CountedStream(iter(()), expected=0, what="", guard=self._nothing))
        kwargs: dict[str, Any] = {"offset": start, "length": end - start, "max_concurrency": 1}
        from azure.core import MatchConditions

        if info.version:
            kwargs |= {"etag": info.version, "match_condition": MatchConditions.IfNotModified}
        downloader = self._call(lambda: self._blob(key).download_blob(**kwargs), key, "read")
        stream = CountedStream(
            downloader.chunks(),
            expected=end - start,
            what=self.uri(key),
            guard=lambda: self._sdk(key, "read"),
        )
        return StreamContext(stream)

    @contextmanager
    def _nothing(self) -> Iterator[None]:
        yield

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        pages = self._container.list_blobs(
            name_starts_with=prefix or None, results_per_page=self.page_size
        )
        it = iter(pages)
        while True:
            with self._sdk(prefix):
                props = next(it, None)
            if props is None:
                return
            yield self._info(str(props.name), props)

    # -- Store -------------------------------------------------------------------------------

    def create(self, key: str, path: Path, *, size: int, md5: str | None = None) -> None:
        from azure.storage.blob import ContentSettings

        settings = ContentSettings(content_md5=bytearray.fromhex(md5)) if md5 else None
        if size < self.multipart_threshold_bytes:
            self._put_single(key, path, size, settings)
        else:
            self._put_blocks(key, path, size, settings)

    def _put_single(self, key: str, path: Path, size: int, settings: Any) -> None:
        def put() -> None:
            with path.open("rb") as fh:
                self._blob(key).upload_blob(
                    fh, length=size, overwrite=False, content_settings=settings, max_concurrency=1
                )

        self._call(put, key, "create")

    def _put_blocks(self, key: str, path: Path, size: int, settings: Any) -> None:
        # A HEAD first saves sending a large file whose key is taken; the commit's
        # If-None-Match: * stays the real guard.
        if self._exists(key):
            raise AlreadyExists(f"{self.uri(key)}: the blob already exists")
        upload = uuid.uuid4().hex  # block ids unique to this upload: racing writers never mix

        def send(part: Part, data: bytes) -> str:
            block_id = base64.b64encode(f"{upload}-{part.number - 1:06d}".encode()).decode()
            self._call(
                lambda: self._blob(key).stage_block(
                    block_id, data, length=part.length, validate_content=True
                ),
                key,
                "create",
            )
            return block_id

        def commit(sent: list[tuple[Part, str]]) -> None:
            from azure.core import MatchConditions
            from azure.storage.blob import BlobBlock

            block_list = [BlobBlock(block_id=block_id) for _, block_id in sent]
            self._call(
                lambda: self._blob(key).commit_block_list(
                    block_list,
                    content_settings=settings,
                    match_condition=MatchConditions.IfMissing,
                ),
                key,
                "create",
            )

        upload_parts(
            path, plan_parts(size, self.part_size_bytes, MAX_BLOCKS), send=send, commit=commit,
            # Uncommitted blocks of a failed upload are garbage-collected by Azure after 7 days.
            abort=lambda _: None,
            concurrency=self.concurrency, what=self.uri(key), thread_name="haul-az-block",
        )  # fmt: skip

    def _exists(self, key: str) -> bool:
        try:
            self.stat(key)
        except NotFound:
            return False
        return True

    def delete(self, key: str) -> bool:
        try:
            self._call(lambda: self._blob(key).delete_blob(delete_snapshots="include"), key)
        except NotFound:
            return False
        return True

    def put_record(self, key: str, data: bytes) -> None:
        self._call(lambda: self._blob(key).upload_blob(data, overwrite=True), key)

    def close(self) -> None:
        self._service.close()


class AzureStoreConfig(StoreConfigBase):
    type: Literal["azure"]
    container: Annotated[str, Field(min_length=3, max_length=63)]
    account_url: str | None = None
    prefix: str = ""
    connection_string_env: str = "AZURE_STORAGE_CONNECTION_STRING"


def from_config(
    name: str, cfg: AzureStoreConfig, secrets: StoreSecrets, tuning: StoreTuning
) -> AzureStore:
    """The connection string from ``secrets`` (captured from ``connection_string_env``), else
    ``account_url`` with Azure's default credential chain.

    A connection string is an account's: where ``account_url`` names an account the string
    does not name (an undeclared container elsewhere, read with the default variable's string
    at hand; a SAS string without ``AccountName``, whose endpoint could be any account's), the
    string is not used for it: the same container name elsewhere is other data."""
    conn = secrets.get("connection_string")
    if conn and cfg.account_url and _conn_account(conn) != _url_account(cfg.account_url):
        conn = None
    return AzureStore(
        name,
        cfg.container,
        prefix=cfg.prefix,
        connection_string=conn,
        account_url=cfg.account_url,
        tuning=tuning,
    )


def _url_account(account_url: str) -> str:
    parts = urlsplit(account_url)
    host = parts.hostname or ""
    if host.endswith(".blob.core.windows.net"):
        return host.split(".", 1)[0]
    # Emulators put the account in the path: http://127.0.0.1:10000/devstoreaccount1
    first = parts.path.strip("/").split("/", 1)[0]
    return first or host.split(".", 1)[0]


def _conn_account(conn: str) -> str | None:
    fields = dict(p.split("=", 1) for p in conn.split(";") if "=" in p)
    return fields.get("AccountName")


def azure_account(cfg: AzureStoreConfig, secrets: StoreSecrets) -> str | None:
    """The storage account of an Azure store: from account_url, else the connection string."""
    if cfg.account_url:
        return _url_account(cfg.account_url)
    conn = secrets.get("connection_string")
    return _conn_account(conn) if conn else None


def _owns(cfg: AzureStoreConfig, secrets: StoreSecrets, url: ParsedURL) -> bool:
    return url.location == (azure_account(cfg, secrets), cfg.container)


def _adhoc(url: ParsedURL) -> StoreConfigBase:
    account, container = url.location
    return AzureStoreConfig(
        type="azure", account_url=f"https://{account}.blob.core.windows.net", container=container
    )


STORE_TYPE = StoreType(
    name="azure",
    scheme="azure",
    url_form="azure://account/container/blob",
    location_parts=2,
    config=AzureStoreConfig,
    build=from_config,
    owns=_owns,
    extra="azure",
    sdk_module="azure.storage.blob",
    loggers=("azure",),
    secret_env=lambda cfg: {"connection_string": cfg.connection_string_env},
    adhoc=_adhoc,
    # An undeclared container of the account in the default variable's connection string is
    # read with it (the account's key, endpoint); any other account with the default chain.
    adhoc_secret_env={"connection_string": "AZURE_STORAGE_CONNECTION_STRING"},
)

__all__ = ["STORE_TYPE", "AzureStore", "AzureStoreConfig", "from_config"]
