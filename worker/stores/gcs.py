"""Google Cloud Storage stores (google-cloud-storage).

- ``stat`` reads the object's metadata; ``version`` is its generation, ``md5`` the stated
  ``md5Hash`` (absent on composite objects, which still have ``crc32c``).
- Reads are ranged downloads of ``bucket.blob(name, generation=g)``: once that generation is
  replaced (404 in an unversioned bucket) the read raises :class:`~worker.errors.Changed`.
  Bytes are fetched raw (no decompressive transcoding), so the size always holds.
- ``create`` never overwrites: ``if_generation_match=0`` on a simple upload, or on a resumable
  upload with ``chunk_size`` for large files; 412 is :class:`~worker.errors.AlreadyExists`.
  Large files are checked with a metadata read first (fake-gcs-server ignores preconditions on
  resumable uploads; real GCS enforces them, and that stays the guard).
- An ``endpoint_url`` on loopback (an emulator) uses anonymous credentials; without one the SDK
  finds Application Default Credentials and honours ``STORAGE_EMULATOR_HOST`` itself.

The SDK's own retries are off and the store makes each call once: a transient error goes up
as :class:`~worker.errors.TransientError` to the engine's retry policy. SDK exceptions are
translated in :func:`_translate` only, through the module's ``ERRORS`` table.
"""

from __future__ import annotations

import base64
import ipaddress
import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field

from worker.errors import (
    AccessDenied,
    AlreadyExists,
    Changed,
    HaulError,
    IntegrityError,
    NotFound,
    StoreError,
    TransientError,
)
from worker.net.status import HTTP_STATUSES, ErrorTable, Op, Rule, header_retry_after
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

MiB = 1024 * 1024
RESUMABLE_QUANTUM = 256 * 1024  # resumable chunk sizes are multiples of 256 KiB


#: GCS answers with statuses only; a 404 under a pinned read means its generation is gone
ERRORS = ErrorTable(
    statuses={
        **HTTP_STATUSES,
        404: Rule(
            NotFound,
            "no such object",
            on_read=Rule(Changed, "the generation being read is gone"),
        ),
    }
)


def _translate(exc: Exception, where: str, op: Op) -> HaulError:
    """The one place google/requests exceptions become haul errors (no server text is kept)."""
    import google.api_core.exceptions as gexc
    import google.auth.exceptions as gauth
    import requests.exceptions as rexc
    import urllib3.exceptions as u3exc
    from google.cloud.storage.exceptions import DataCorruption, InvalidResponse

    if isinstance(exc, DataCorruption):
        return IntegrityError(f"{where}: the downloaded bytes do not match the stated checksum")
    if isinstance(exc, json.JSONDecodeError | UnicodeDecodeError):
        # A JSON answer (metadata, a listing page, an upload's reply) cut short or garbled.
        # requests' own JSONDecodeError is also a RequestException: named here first, so the
        # message says what happened instead of "connection failed".
        return ERRORS.malformed(where, exc)
    if isinstance(exc, gauth.TransportError | rexc.RequestException | u3exc.HTTPError):
        return TransientError(f"{where}: connection failed ({type(exc).__name__})")
    if isinstance(exc, gauth.GoogleAuthError):
        return AccessDenied(f"{where}: no usable Google credentials ({type(exc).__name__})")
    status = 0
    if isinstance(exc, gexc.GoogleAPICallError):
        status = int(exc.code or 0)
    elif isinstance(exc, InvalidResponse):
        status = int(getattr(exc.response, "status_code", 0) or 0)
    # The message is only inspected, never repeated.
    message = str(getattr(exc, "message", "") or "").lower()
    if status == 404 and "bucket" in message and "object" not in message:
        return NotFound(f"{where}: the bucket does not exist (HTTP 404)")
    if status == 400 and ("md5" in message or "crc32c" in message or "hash" in message):
        return IntegrityError(f"{where}: the server rejected the checksum (HTTP 400)")
    if not status:
        return StoreError(f"{where}: request failed ({type(exc).__name__})")
    headers = getattr(getattr(exc, "response", None), "headers", None)
    return ERRORS.error(where, status=status, op=op, retry_after_s=header_retry_after(headers))


def is_emulator_endpoint(url: str) -> bool:
    """True for loopback endpoints (fake-gcs-server and friends)."""
    host = urlsplit(url if "://" in url else f"http://{url}").hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _b64_to_hex(value: str) -> str:
    return base64.b64decode(value).hex()


class GCSStore(SdkStore):
    """One bucket (and key prefix) of Google Cloud Storage."""

    @property
    def sdk_errors(self) -> tuple[type[BaseException], ...]:
        import google.api_core.exceptions as gexc
        import google.auth.exceptions as gauth
        import requests.exceptions as rexc
        import urllib3.exceptions as u3exc
        from google.cloud.storage.exceptions import DataCorruption, InvalidResponse

        return (
            gexc.GoogleAPIError,
            gauth.GoogleAuthError,
            rexc.RequestException,
            # a body cut short reaches download_as_bytes as urllib3's ProtocolError, unwrapped
            u3exc.HTTPError,
            InvalidResponse,
            DataCorruption,
            # a body that does not parse (requests' JSONDecodeError is one of these too)
            json.JSONDecodeError,
            UnicodeDecodeError,
        )

    def _translate(self, exc: Any, where: str, op: Op) -> HaulError:
        return _translate(exc, where, op)

    def __init__(
        self,
        name: str,
        bucket: str,
        *,
        prefix: str = "",
        client: Any = None,
        endpoint_url: str | None = None,
        project: str | None = None,
        anonymous: bool | None = None,
        tuning: StoreTuning = DEFAULT_TUNING,
        page_size: int = 1000,
    ) -> None:
        self.name = name
        self.bucket_name = bucket
        self.timeout_s = tuning.timeout_s
        self.prefix = prefix.strip("/")
        self.multipart_threshold_bytes = tuning.multipart_threshold_bytes
        # resumable chunks must be multiples of 256 KiB
        self.part_size_bytes = max(
            RESUMABLE_QUANTUM, tuning.part_size_bytes // RESUMABLE_QUANTUM * RESUMABLE_QUANTUM
        )
        self.page_size = page_size
        if client is None:
            if anonymous is None:
                anonymous = endpoint_url is not None and is_emulator_endpoint(endpoint_url)
            client = self._make_client(endpoint_url, project, anonymous=anonymous)
        self._client = client
        self._bucket = client.bucket(bucket)

    def _make_client(
        self, endpoint_url: str | None, project: str | None, *, anonymous: bool
    ) -> Any:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        options = {"api_endpoint": endpoint_url} if endpoint_url else None
        with self._sdk(""):
            if anonymous:
                return storage.Client(
                    project=project or "haul-emulator",
                    credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
                    client_options=options,
                )
            return storage.Client(project=project, client_options=options)

    # -- the translation boundary ------------------------------------------------------------

    def _where(self, key: str) -> str:
        return self.uri(key) if key else f"gs://{self.bucket_name}"

    # -- ObjectSource ------------------------------------------------------------------------

    def uri(self, key: str) -> str:
        return f"gs://{self.bucket_name}/{key}"

    def stat(self, key: str) -> ObjectInfo:
        blob = self._bucket.blob(key)
        self._call(lambda: blob.reload(retry=None, timeout=self.timeout_s), key)
        return self._info(blob)

    @staticmethod
    def _info(blob: Any) -> ObjectInfo:
        md5 = _b64_to_hex(blob.md5_hash) if blob.md5_hash else None
        crc = int.from_bytes(base64.b64decode(blob.crc32c), "big") if blob.crc32c else None
        if md5:
            note = "md5: md5Hash"
        elif crc is not None:
            # A composite object: the download computes a crc32c too and checks it.
            note = "crc32c: crc32c of a composite object"
        else:
            note = "none: the object states no checksum"
        generation = str(blob.generation) if blob.generation is not None else None
        return ObjectInfo(
            key=str(blob.name),
            size=int(blob.size or 0),
            etag=blob.etag,
            version=generation,
            last_modified=_iso(blob.updated),
            md5=md5,
            crc32c=crc,
            checksum_note=note,
            extra={"component_count": str(blob.component_count)} if blob.component_count else {},
        )

    def read(
        self, key: str, *, start: int = 0, length: int | None = None, pin: ObjectInfo | None = None
    ) -> StreamContext:
        info = pin or self.stat(key)
        end = range_end(start, length, info.size)
        generation = int(info.version) if info.version else None
        blob = self._bucket.blob(key, generation=generation)
        step = self.part_size_bytes

        def fetch(offset: int) -> bytes:
            last = min(offset + step, end) - 1
            data: bytes = blob.download_as_bytes(
                start=offset,
                end=last,
                raw_download=True,
                checksum=None,
                retry=None,
                timeout=self.timeout_s,
            )
            return data

        def chunks(first: bytes) -> Iterator[bytes]:
            yield first
            for offset in range(start + step, end, step):
                yield self._call(lambda o=offset: fetch(o), key, "read")  # type: ignore[misc]

        if end == start:
            body: Iterator[bytes] = iter(())
        else:  # the first range is fetched now, so a gone generation fails at open time
            body = chunks(self._call(lambda: fetch(start), key, "read"))
        stream = CountedStream(
            body, expected=end - start, what=self.uri(key), guard=lambda: self._sdk(key, "read")
        )
        return StreamContext(stream)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        with self._sdk(prefix):
            blobs = iter(
                self._client.list_blobs(
                    self.bucket_name,
                    prefix=prefix or None,
                    page_size=self.page_size,
                    retry=None,
                    timeout=self.timeout_s,
                )
            )
        while True:
            with self._sdk(prefix):
                blob = next(blobs, None)
            if blob is None:
                return
            yield self._info(blob)

    # -- Store -------------------------------------------------------------------------------

    def create(self, key: str, path: Path, *, size: int, md5: str | None = None) -> None:
        large = size >= self.multipart_threshold_bytes
        if large and self._exists(key):
            raise AlreadyExists(f"{self.uri(key)}: the object already exists")

        def upload() -> None:
            blob = self._bucket.blob(key, chunk_size=self.part_size_bytes if large else None)
            if md5:
                blob.md5_hash = base64.b64encode(bytes.fromhex(md5)).decode("ascii")
            blob.upload_from_filename(
                str(path), if_generation_match=0, retry=None, timeout=self.timeout_s
            )

        self._call(upload, key, "create")

    def _exists(self, key: str) -> bool:
        try:
            self.stat(key)
        except NotFound:
            return False
        return True

    def delete(self, key: str) -> bool:
        try:
            self._call(
                lambda: self._bucket.blob(key).delete(retry=None, timeout=self.timeout_s), key
            )
        except NotFound:
            return False
        return True

    def put_record(self, key: str, data: bytes) -> None:
        self._call(
            lambda: self._bucket.blob(key).upload_from_string(
                data, content_type="application/json", retry=None, timeout=self.timeout_s
            ),
            key,
        )

    def close(self) -> None:
        self._client.close()


class GCSStoreConfig(StoreConfigBase):
    type: Literal["gcs"]
    bucket: Annotated[str, Field(min_length=3, max_length=222)]
    prefix: str = ""
    endpoint_url: str | None = None
    project: str | None = None


def from_config(
    name: str, cfg: GCSStoreConfig, secrets: StoreSecrets, tuning: StoreTuning
) -> GCSStore:
    """``endpoint_url`` from the config, else an emulator host captured into the store's secrets
    (``storage_emulator_host``); without either, Application Default Credentials."""
    endpoint = cfg.endpoint_url or secrets.get("storage_emulator_host")
    anonymous = endpoint is not None and (
        is_emulator_endpoint(endpoint) or endpoint == secrets.get("storage_emulator_host")
    )
    return GCSStore(
        name,
        cfg.bucket,
        prefix=cfg.prefix,
        endpoint_url=endpoint,
        project=cfg.project,
        anonymous=anonymous,
        tuning=tuning,
    )


def _owns(cfg: GCSStoreConfig, secrets: StoreSecrets, url: ParsedURL) -> bool:
    return url.location == (cfg.bucket,)


def _adhoc(url: ParsedURL) -> StoreConfigBase:
    return GCSStoreConfig(type="gcs", bucket=url.location[0])


STORE_TYPE = StoreType(
    name="gcs",
    scheme="gs",
    url_form="gs://bucket/key",
    location_parts=1,
    config=GCSStoreConfig,
    build=from_config,
    owns=_owns,
    extra="gcs",
    sdk_module="google.cloud.storage",
    loggers=("google",),
    # The SDK honours it too; captured so the store sees it without reading the environment.
    secret_env=lambda cfg: {"storage_emulator_host": "STORAGE_EMULATOR_HOST"},
    adhoc=_adhoc,
    adhoc_secret_env={"storage_emulator_host": "STORAGE_EMULATOR_HOST"},
)

__all__ = ["STORE_TYPE", "GCSStore", "GCSStoreConfig", "from_config"]
