"""S3 and S3-compatible stores (boto3).

- ``stat`` is ``head_object``; ``md5`` is the ETag only for single-part objects that are not
  SSE-KMS / SSE-C encrypted (otherwise the ETag is not a content hash, and ``checksum_note``
  says why).
- Reads are ranged GETs pinned with ``IfMatch=<etag>``, plus ``VersionId`` when the bucket is
  versioned: a replaced object answers 412, raised as :class:`~worker.errors.Changed`.
- ``create`` never overwrites: ``put_object(IfNoneMatch='*')`` for small files, a multipart
  upload with parallel parts and ``complete_multipart_upload(IfNoneMatch='*')`` for large ones
  (the upload is aborted on every failure). 412 means the key is taken:
  :class:`~worker.errors.AlreadyExists`.
- ``delete`` removes every version (and delete marker) of the key in a versioned bucket.

The SDK's own retries are off and the store makes each call once: a transient error goes up
as :class:`~worker.errors.TransientError` to the engine's retry policy. SDK exceptions are
translated in :func:`_translate` only, through the module's ``ERRORS`` table.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import replace
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
    NotFound,
    SourceError,
    StoreError,
    TransientError,
    UnsupportedURL,
)
from worker.net.presigned import PresignedRangeReader
from worker.net.status import (
    HTTP_STATUSES,
    ErrorTable,
    Op,
    Rule,
    header_retry_after,
    parse_retry_after,
)
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
MIN_PART_BYTES = 5 * MiB
MAX_PARTS = 10_000
READ_CHUNK_BYTES = 1 * MiB
#: lifetime of the presigned URL of one ranged read (it is used at once)
_PRESIGN_S = 3600

_GONE = Rule(NotFound, "no such object")
_DENIED = Rule(AccessDenied, "access denied")
_BUSY = Rule(TransientError, "temporary server error")
_SLOW = Rule(TransientError, "throttled")
_BAD_DIGEST = Rule(IntegrityError, "the server rejected the checksum")

#: S3 error codes; a code decides before the HTTP status does
ERRORS = ErrorTable(
    codes={
        "NoSuchBucket": Rule(NotFound, "the bucket does not exist"),
        "NoSuchKey": _GONE, "NotFound": _GONE, "NoSuchVersion": _GONE, "NoSuchUpload": _GONE,
        "AccessDenied": _DENIED, "InvalidAccessKeyId": _DENIED, "SignatureDoesNotMatch": _DENIED,
        "ExpiredToken": _DENIED, "InvalidToken": _DENIED, "AllAccessDisabled": _DENIED,
        "AccountProblem": _DENIED,
        "PreconditionFailed": HTTP_STATUSES[412],
        "SlowDown": _SLOW, "Throttling": _SLOW, "ThrottlingException": _SLOW,
        "RequestTimeout": _BUSY, "RequestTimeTooSkewed": _BUSY, "InternalError": _BUSY,
        "ServiceUnavailable": _BUSY, "ConditionalRequestConflict": _BUSY,
        "OperationAborted": _BUSY,
        "BadDigest": _BAD_DIGEST, "InvalidDigest": _BAD_DIGEST,
        "XAmzContentSHA256Mismatch": _BAD_DIGEST, "InvalidChecksum": _BAD_DIGEST,
    }
)  # fmt: skip


def _translate(exc: Exception, where: str, op: Op) -> HaulError:
    """The one place botocore exceptions become haul errors (messages carry no credentials)."""
    import botocore.exceptions as bce
    from botocore.parsers import ResponseParserError

    if isinstance(exc, ResponseParserError | UnicodeDecodeError):
        # An XML answer botocore cannot parse (most cut S3 answers come as a ClientError with
        # a 500 instead, which the status ladder retries too). Its message quotes the whole
        # body: only the type is shown.
        return ERRORS.malformed(where, exc)
    if isinstance(exc, bce.ClientError):
        err = exc.response.get("Error", {})
        meta = exc.response.get("ResponseMetadata", {})
        return ERRORS.error(
            where,
            status=int(meta.get("HTTPStatusCode") or 0),
            code=str(err.get("Code", "")),
            op=op,
            retry_after_s=header_retry_after(meta.get("HTTPHeaders")),
        )
    if isinstance(exc, bce.FlexibleChecksumError):
        # botocore checks a stated CRC32/SHA checksum of a body itself (response checksum
        # validation): bytes that differ from it are an integrity error, retried like an md5 one.
        return IntegrityError(f"{where}: the body does not match the server's stated checksum")
    if isinstance(exc, bce.IncompleteReadError):
        return IntegrityError(f"{where}: the body ended early ({type(exc).__name__})")
    if isinstance(exc, bce.ParamValidationError):
        # Refused before any request (an invalid bucket name, say): no retry can help. Its
        # report names the parameter and the rule; the values are the URL's, no secret.
        detail = " ".join(str(exc.kwargs.get("report", "")).split())[:300]
        return UnsupportedURL(f"{where}: the S3 client refused the request: {detail}")
    if isinstance(exc, bce.NoCredentialsError | bce.PartialCredentialsError):
        return AccessDenied(f"{where}: no usable credentials ({type(exc).__name__})")
    if isinstance(exc, bce.ProfileNotFound):
        return AccessDenied(f"{where}: the configured AWS profile does not exist")
    if isinstance(
        exc,
        bce.ConnectionError
        | bce.HTTPClientError
        | bce.ResponseStreamingError
        | bce.ReadTimeoutError,
    ):
        return TransientError(f"{where}: connection failed ({type(exc).__name__})")
    return StoreError(f"{where}: {type(exc).__name__}")


def _is_ip_or_localhost(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _b64_md5(hex_md5: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_md5)).decode("ascii")


class S3Store(SdkStore):
    """One bucket (and key prefix) of S3 or an S3-compatible service."""

    @property
    def sdk_errors(self) -> tuple[type[BaseException], ...]:
        import botocore.exceptions as bce
        from botocore.parsers import ResponseParserError

        # ResponseParserError is a plain Exception in botocore, outside BotoCoreError
        return (bce.ClientError, bce.BotoCoreError, ResponseParserError, UnicodeDecodeError)

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
        region: str | None = None,
        profile: str | None = None,
        tuning: StoreTuning = DEFAULT_TUNING,
        page_size: int = 1000,
        fast_reads: bool = True,
    ) -> None:
        if tuning.part_size_bytes < MIN_PART_BYTES:
            raise ValueError(f"part_size_bytes must be >= {MIN_PART_BYTES} (S3's minimum)")
        self.name = name
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.multipart_threshold_bytes = tuning.multipart_threshold_bytes
        self.part_size_bytes = tuning.part_size_bytes
        self.concurrency = max(1, tuning.concurrency)
        self.page_size = page_size
        self._versioned: bool | None = None
        self._fast_reads = fast_reads and client is None
        self._fast_proven = False
        self._timeout_s = tuning.timeout_s
        self._fast: PresignedRangeReader | None = None
        self._fast_lock = threading.Lock()
        self._client = (
            client if client is not None else self._make_client(endpoint_url, region, profile)
        )

    def _make_client(
        self, endpoint_url: str | None, region: str | None, profile: str | None
    ) -> Any:
        s3_cfg: dict[str, str] = {}
        if endpoint_url and _is_ip_or_localhost(endpoint_url):
            s3_cfg["addressing_style"] = "path"
        import boto3
        from botocore.config import Config

        config = Config(
            # Presigned URLs too (boto3 would presign with SigV2, which newer regions refuse).
            signature_version="s3v4",
            retries={"total_max_attempts": 1, "mode": "standard"},
            # http_timeout_s, not botocore's 60 s: a stalled answer is a retried timeout.
            connect_timeout=min(self._timeout_s, 15.0),
            read_timeout=self._timeout_s,
            max_pool_connections=max(10, 2 * self.concurrency),
            s3=s3_cfg or None,
        )
        with self._sdk("", "other"):
            session = boto3.session.Session(profile_name=profile)
            return session.client(
                "s3", endpoint_url=endpoint_url, region_name=region, config=config
            )

    # -- the translation boundary ------------------------------------------------------------

    def _where(self, key: str) -> str:
        return self.uri(key) if key else f"s3://{self.bucket}"

    # -- ObjectSource ------------------------------------------------------------------------

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def stat(self, key: str) -> ObjectInfo:
        resp = self._call(lambda: self._client.head_object(Bucket=self.bucket, Key=key), key)
        return self._info(key, resp)

    def _info(self, key: str, resp: dict[str, Any]) -> ObjectInfo:
        etag = str(resp.get("ETag", "")).strip('"') or None
        version_id = resp.get("VersionId")
        extra: dict[str, str] = {}
        if version_id and version_id != "null":
            extra["version_id"] = str(version_id)
        md5, note = self._checksum(etag, resp)
        return ObjectInfo(
            key=key,
            size=int(resp.get("ContentLength", resp.get("Size", 0))),
            etag=etag,
            version=extra.get("version_id") or etag,
            last_modified=_iso(resp.get("LastModified")),
            md5=md5,
            checksum_note=note,
            extra=extra,
        )

    @staticmethod
    def _checksum(etag: str | None, resp: dict[str, Any]) -> tuple[str | None, str]:
        sse = str(resp.get("ServerSideEncryption", ""))
        if not etag:
            return None, "none: the server sent no ETag"
        if "-" in etag:
            return None, "none: multipart ETag is not a content hash"
        if sse.startswith("aws:kms"):
            return None, "none: the ETag of an SSE-KMS object is not a content hash"
        if resp.get("SSECustomerAlgorithm"):
            return None, "none: the ETag of an SSE-C object is not a content hash"
        if len(etag) != 32:
            return None, "none: the ETag is not an md5"
        return etag, "md5: single-part ETag"

    def read(
        self, key: str, *, start: int = 0, length: int | None = None, pin: ObjectInfo | None = None
    ) -> StreamContext:
        info = pin or self.stat(key)
        end = range_end(start, length, info.size)
        if end == start:
            return StreamContext(_empty_stream())
        if self._fast_reads:
            fast = self._fast_read(key, start, end, info)
            if fast is not None:
                return fast
        args: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": key,
            "Range": f"bytes={start}-{end - 1}",
        }
        if info.etag:
            args["IfMatch"] = f'"{info.etag}"'
        if info.extra.get("version_id"):
            args["VersionId"] = info.extra["version_id"]
        resp = self._call(lambda: self._client.get_object(**args), key, "read")
        body = resp["Body"]
        stream = CountedStream(
            body.iter_chunks(chunk_size=READ_CHUNK_BYTES),
            expected=end - start,
            what=self.uri(key),
            guard=lambda: self._sdk(key, "read"),
            on_close=body.close,
        )
        return StreamContext(stream)

    def close(self) -> None:
        with self._fast_lock:
            fast, self._fast = self._fast, None
        if fast is not None:
            fast.close()

    def _reader(self) -> PresignedRangeReader:
        with self._fast_lock:
            if self._fast is None:
                # TLS trusts what boto3 trusts (AWS_CA_BUNDLE, ca_bundle in the profile), else
                # the system's CAs.
                self._fast = PresignedRangeReader(
                    timeout_s=self._timeout_s, verify=_boto_verify(self._client)
                )
            return self._fast

    def _fast_read(self, key: str, start: int, end: int, info: ObjectInfo) -> StreamContext | None:
        """The range through a presigned URL (:mod:`worker.net.presigned`).

        None means "use boto3". Only a proven incompatibility turns this path off for the
        store: an answer that is neither the range, a changed or missing object nor a
        temporary error (a region redirect, a signature or a ranged GET the endpoint refuses,
        a 200 that ignores the range), or a TLS certificate that only boto3's settings may
        accept, before the path ever worked. A temporary failure (a reset, a timeout, a range
        cut short) is raised like boto3's would be and retried by the engine on this same
        path: it once switched the path off for the life of the store after ONE reset.
        """
        params = {"Bucket": self.bucket, "Key": key}
        if info.extra.get("version_id"):
            params["VersionId"] = info.extra["version_id"]
        with self._sdk(key, "read"):
            url = self._client.generate_presigned_url(
                "get_object", Params=params, ExpiresIn=_PRESIGN_S
            )
        if_match = f'"{info.etag}"' if info.etag else None
        try:
            got = self._reader().read(url, start, end, if_match=if_match)
        except SourceError as exc:
            if self._fast_proven:
                raise
            # A certificate the system's CAs reject: boto3's own CA settings may accept it.
            self._give_up_fast_reads(str(exc))
            return None
        if got.body is not None:
            self._fast_proven = True
            return StreamContext(got.body)
        status = got.status
        if status == 206:
            # A partial answer that is not exactly the range asked for: cut short on the way
            # (a wrong Content-Length) or garbled, so retried, on this path.
            raise IntegrityError(
                f"{self.uri(key)}: the answer to bytes {start}-{end - 1} is not that range"
            )
        if status in (404, 412, 429) or status >= 500:
            raise ERRORS.error(
                self.uri(key),
                status=status,
                op="read",
                retry_after_s=parse_retry_after(got.retry_after),
            )
        self._give_up_fast_reads(f"presigned GET answered HTTP {status}")
        return None

    def _give_up_fast_reads(self, why: str) -> None:
        log.info("%s: ranged reads go through boto3 (%s)", self.name, why)
        self._fast_reads = False

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        paginator = self._client.get_paginator("list_objects_v2")
        pages = paginator.paginate(
            Bucket=self.bucket, Prefix=prefix, PaginationConfig={"PageSize": self.page_size}
        )
        it = iter(pages)
        while True:
            with self._sdk(prefix):
                page = next(it, None)
            if page is None:
                return
            for obj in page.get("Contents", []):
                etag = str(obj.get("ETag", "")).strip('"') or None
                yield ObjectInfo(
                    key=obj["Key"],
                    size=int(obj["Size"]),
                    etag=etag,
                    version=etag,
                    last_modified=_iso(obj.get("LastModified")),
                    checksum_note="unknown: a listing does not state encryption; stat() tells",
                )

    # -- Store -------------------------------------------------------------------------------

    def create(self, key: str, path: Path, *, size: int, md5: str | None = None) -> None:
        if size < self.multipart_threshold_bytes:
            self._put_small(key, path, size, md5)
        else:
            self._put_multipart(key, path, size, md5)

    def _put_small(self, key: str, path: Path, size: int, md5: str | None) -> None:
        def put() -> None:
            with path.open("rb") as fh:
                args: dict[str, Any] = {
                    "Bucket": self.bucket,
                    "Key": key,
                    "Body": fh,
                    "ContentLength": size,
                    "IfNoneMatch": "*",
                }
                if md5:
                    args["ContentMD5"] = _b64_md5(md5)
                self._client.put_object(**args)

        self._call(put, key, "create")

    def _put_multipart(self, key: str, path: Path, size: int, md5: str | None) -> None:
        # A HEAD first: sending gigabytes only to learn at completion that the key is taken
        # wastes the transfer. completeMultipartUpload(IfNoneMatch='*') stays the real guard.
        if self._exists(key):
            raise AlreadyExists(f"{self.uri(key)}: the key already exists")
        upload_id = self._call(
            lambda: self._client.create_multipart_upload(Bucket=self.bucket, Key=key)["UploadId"],
            key,
        )

        def send(part: Part, data: bytes) -> str:
            digest = base64.b64encode(hashlib.md5(data).digest()).decode("ascii")  # noqa: S324
            resp = self._call(
                lambda: self._client.upload_part(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=part.number,
                    Body=data, ContentLength=part.length, ContentMD5=digest,
                ),
                key,
                "create",
            )  # fmt: skip
            return str(resp["ETag"])

        def commit(sent: list[tuple[Part, str]]) -> None:
            done = {"Parts": [{"PartNumber": p.number, "ETag": etag} for p, etag in sent]}
            self._call(
                lambda: self._client.complete_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload=done,
                    IfNoneMatch="*",
                ),
                key,
                "create",
            )  # fmt: skip

        parts = plan_parts(size, self.part_size_bytes, MAX_PARTS)
        upload_parts(
            path, parts, send=send, commit=commit, abort=lambda _: self._abort(key, upload_id),
            concurrency=self.concurrency, what=self.uri(key), thread_name="haul-s3-part",
        )  # fmt: skip
        log.debug(
            "s3 multipart upload of %s done in %d parts (md5 %s)", self.uri(key), len(parts), md5
        )

    def _abort(self, key: str, upload_id: str) -> None:
        try:
            self._call(
                lambda: self._client.abort_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload_id
                ),
                key,
            )
        except StoreError as exc:  # the original failure matters more; lifecycle rules clean up
            log.warning("could not abort the multipart upload of %s: %s", self.uri(key), exc)

    def _exists(self, key: str) -> bool:
        try:
            self.stat(key)
        except NotFound:
            return False
        return True

    def _is_versioned(self) -> bool:
        if self._versioned is None:
            try:
                resp = self._call(
                    lambda: self._client.get_bucket_versioning(Bucket=self.bucket), ""
                )
            except AccessDenied:
                self._versioned = False  # cannot tell: delete the current version only
            else:
                self._versioned = resp.get("Status") in ("Enabled", "Suspended")
        return self._versioned

    def delete(self, key: str) -> bool:
        if self._is_versioned():
            return self._delete_versions(key)
        if not self._exists(key):
            return False
        self._call(lambda: self._client.delete_object(Bucket=self.bucket, Key=key), key)
        return True

    def _delete_versions(self, key: str) -> bool:
        """Delete every version and delete marker of exactly ``key``; True if data existed."""
        paginator = self._client.get_paginator("list_object_versions")
        pages = iter(paginator.paginate(Bucket=self.bucket, Prefix=key))
        targets: list[dict[str, str]] = []
        had_data = False
        while True:
            with self._sdk(key):
                page = next(pages, None)
            if page is None:
                break
            for entry in page.get("Versions", []):
                if entry["Key"] == key:
                    had_data = True
                    targets.append({"Key": key, "VersionId": entry["VersionId"]})
            targets += [
                {"Key": key, "VersionId": m["VersionId"]}
                for m in page.get("DeleteMarkers", [])
                if m["Key"] == key
            ]
        for i in range(0, len(targets), 1000):
            resp = self._delete_batch(key, targets[i : i + 1000])
            if resp.get("Errors"):
                first = resp["Errors"][0]
                raise StoreError(
                    f"{self.uri(key)}: could not delete a version ({first.get('Code')})"
                )
        return had_data

    def _delete_batch(self, key: str, targets: Sequence[dict[str, str]]) -> dict[str, Any]:
        batch = {"Objects": [*targets], "Quiet": True}
        resp: dict[str, Any] = self._call(
            lambda: self._client.delete_objects(Bucket=self.bucket, Delete=batch), key
        )
        return resp

    def put_record(self, key: str, data: bytes) -> None:
        digest = base64.b64encode(hashlib.md5(data).digest()).decode("ascii")  # noqa: S324
        self._call(
            lambda: self._client.put_object(
                Bucket=self.bucket, Key=key, Body=data, ContentMD5=digest
            ),
            key,
        )


class _EmptyStream:
    def readinto(self, buffer: memoryview) -> int:
        return 0

    def close(self) -> None:
        return None


def _boto_verify(client: Any) -> Any:
    """What the boto3 client verifies TLS with: True, False or a CA bundle path."""
    session = getattr(getattr(client, "_endpoint", None), "http_session", None)
    verify = getattr(session, "_verify", True)
    return verify if isinstance(verify, bool | str) else True


def _empty_stream() -> _EmptyStream:
    return _EmptyStream()


class S3StoreConfig(StoreConfigBase):
    type: Literal["s3"]
    bucket: Annotated[str, Field(min_length=3, max_length=63)]
    prefix: str = ""
    region: str | None = None
    endpoint_url: str | None = None
    profile: str | None = None
    #: ranged reads through presigned URLs and http.client (no proxy); false: boto3 for all
    fast_reads: bool = True


def from_config(
    name: str, cfg: S3StoreConfig, secrets: StoreSecrets, tuning: StoreTuning
) -> S3Store:
    """Credentials come from boto3's chain (env, shared files with ``profile``, instance role)."""
    return S3Store(
        name,
        cfg.bucket,
        prefix=cfg.prefix,
        endpoint_url=cfg.endpoint_url,
        region=cfg.region,
        profile=cfg.profile,
        tuning=replace(tuning, part_size_bytes=max(MIN_PART_BYTES, tuning.part_size_bytes)),
        # The fast path connects directly; where boto3 would go through a proxy, it does not.
        fast_reads=cfg.fast_reads and not tuning.proxy_in_env,
    )


def _owns(cfg: S3StoreConfig, secrets: StoreSecrets, url: ParsedURL) -> bool:
    return url.location == (cfg.bucket,)


def _adhoc(url: ParsedURL) -> StoreConfigBase:
    return S3StoreConfig(type="s3", bucket=url.location[0])


STORE_TYPE = StoreType(
    name="s3",
    scheme="s3",
    url_form="s3://bucket/key",
    location_parts=1,
    config=S3StoreConfig,
    build=from_config,
    owns=_owns,
    extra="s3",
    sdk_module="boto3",
    loggers=("boto3", "botocore"),
    adhoc=_adhoc,
)

__all__ = ["STORE_TYPE", "S3Store", "S3StoreConfig", "from_config"]
