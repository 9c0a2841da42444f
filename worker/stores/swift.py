"""OpenStack Swift stores (python-swiftclient).

- A swiftclient ``Connection`` holds one HTTP connection, and reusing it while a body is being
  read silently truncates that body. So every thread gets its own Connection
  (``threading.local``), and an open read takes it out of the thread's slot until the stream is
  closed: whatever the thread does meanwhile gets another Connection. Byte counts are always
  checked (:class:`~worker.stores._stream.CountedStream`).
- Auth: v1 with ``user``/``key`` from the secrets, v3 (Keystone) from the ``os_*`` secrets. The
  store's ``project`` is the account: the storage URL is ``.../AUTH_<project>``. The token and
  storage URL are shared by all Connections of the store.
- ``stat`` is HEAD; ``md5`` is the ETag of a plain object, none for SLO/DLO manifests (their ETag
  hashes the segment ETags), with the reason in ``checksum_note``.
- Reads send ``Range`` and ``If-Match: <etag>``; 412 is :class:`~worker.errors.Changed`, and
  so is a 404 under that read: an object server lists the object's directory and then opens
  the newest data file, and an overwrite landing between the two unlinks it (a one-node Swift
  answers 404; a real cluster can too, when every replica it asks is in that moment). The
  engine starts the object over from a fresh stat, which says ``not found`` when it is gone.
- ``create`` sends ``If-None-Match: *`` (412: :class:`~worker.errors.AlreadyExists`) and the md5
  as ``ETag`` (Swift answers 422 on a mismatch). Large files go up as SLO segments, in parallel,
  into ``<container>_segments``; the manifest PUT carries ``If-None-Match: *``. Swift's check is
  not atomic under concurrent writers (eventual consistency); content-addressed keys make a
  double write harmless.

The SDK's own retries are off and the store makes each call once: a transient error goes up
as :class:`~worker.errors.TransientError` to the engine's retry policy. SDK exceptions are
translated in :func:`_translate` only, through the module's ``ERRORS`` table.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import socket
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

if TYPE_CHECKING:
    from swiftclient.client import Connection

from pydantic import Field

from worker.errors import (
    AlreadyExists,
    Changed,
    HaulError,
    IntegrityError,
    NotFound,
    StoreError,
    TransientError,
    UnsupportedURL,
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
READ_CHUNK_BYTES = 1 * MiB
MAX_SEGMENTS = 1000  # Swift's default max_manifest_segments
_MD5_HEX = re.compile(r"^[0-9a-f]{32}$")


#: Swift answers with statuses only: 422 is a rejected ETag, 498 its rate limiting; a 404
#: under a pinned read is an object being overwritten (see the module's docstring)
ERRORS = ErrorTable(
    statuses={
        **HTTP_STATUSES,
        404: Rule(
            NotFound,
            "not found",
            on_read=Rule(Changed, "the object was replaced or removed while it was being read"),
        ),
        422: Rule(IntegrityError, "the server rejected the checksum"),
        498: Rule(TransientError, "throttled"),
    }
)


#: what swiftclient raises on a body it cannot decode (a JSON listing page or auth answer)
MALFORMED_BODY = (json.JSONDecodeError, UnicodeDecodeError)


def _translate(exc: Exception, where: str, op: Op) -> HaulError:
    """The one place swiftclient/requests exceptions become haul errors (status only)."""
    import requests.exceptions as rexc
    import urllib3.exceptions as u3exc
    from swiftclient.exceptions import ClientException

    if isinstance(exc, MALFORMED_BODY):
        # A listing page (JSON) cut short or garbled: swiftclient's json.loads fails on it.
        return ERRORS.malformed(where, exc)
    if isinstance(exc, ClientException):
        status = int(exc.http_status or 0)
        if not status:
            return TransientError(f"{where}: temporary failure (no response)")
        return ERRORS.error(
            where,
            status=status,
            op=op,
            retry_after_s=header_retry_after(exc.http_response_headers),
        )
    if isinstance(exc, rexc.RequestException | u3exc.HTTPError | socket.error):
        return TransientError(f"{where}: connection failed ({type(exc).__name__})")
    return StoreError(f"{where}: {type(exc).__name__}")


@dataclass(frozen=True)
class SwiftAuth:
    """How to authenticate; never printed (no ``repr`` of the secrets)."""

    auth_url: str
    auth_version: str = "1"
    user: str | None = None
    key: str | None = None
    os_options: tuple[tuple[str, str], ...] = ()

    def __repr__(self) -> str:
        return f"SwiftAuth(auth_url={self.auth_url!r}, auth_version={self.auth_version!r})"


class _Local(threading.local):
    conn: Connection | None = None


def _iso(value: str | None) -> str | None:
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).isoformat()
    except (TypeError, ValueError):
        return None


class SwiftStore(SdkStore):
    """One container (and key prefix) of an OpenStack Swift account."""

    @property
    def sdk_errors(self) -> tuple[type[BaseException], ...]:
        import requests.exceptions as rexc
        import urllib3.exceptions as u3exc
        from swiftclient.exceptions import ClientException

        # a body cut short reaches the reader as urllib3's ProtocolError, not wrapped by requests
        return (ClientException, rexc.RequestException, u3exc.HTTPError, OSError, *MALFORMED_BODY)

    def _translate(self, exc: Any, where: str, op: Op) -> HaulError:
        return _translate(exc, where, op)

    def __init__(
        self,
        name: str,
        container: str,
        auth: SwiftAuth,
        *,
        project: str | None = None,
        prefix: str = "",
        tuning: StoreTuning = DEFAULT_TUNING,
        page_size: int = 10_000,
    ) -> None:
        self.name = name
        self.container = container
        self.segment_container = f"{container}_segments"
        self.project = project
        self.prefix = prefix.strip("/")
        self.multipart_threshold_bytes = tuning.multipart_threshold_bytes
        self.part_size_bytes = tuning.part_size_bytes
        self.concurrency = max(1, tuning.concurrency)
        self.page_size = page_size
        self.timeout_s = tuning.timeout_s
        self._auth = auth
        self._local = _Local()
        self._lock = threading.Lock()
        self._storage_url: str | None = None
        self._token: str | None = None

    # -- connections -------------------------------------------------------------------------

    def _new_connection(self) -> Connection:
        from swiftclient.client import Connection

        with self._lock:
            if self._storage_url is None:
                self._authenticate()
            os_options = dict(self._auth.os_options)
            os_options["object_storage_url"] = str(self._storage_url)
            return Connection(
                authurl=self._auth.auth_url,
                user=self._auth.user,
                key=self._auth.key,
                auth_version=self._auth.auth_version,
                os_options=os_options,
                preauthtoken=self._token,
                retries=0,
                retry_on_ratelimit=False,
                timeout=self.timeout_s,
            )

    def _authenticate(self) -> None:
        from swiftclient.client import Connection

        conn = Connection(
            authurl=self._auth.auth_url,
            user=self._auth.user,
            key=self._auth.key,
            auth_version=self._auth.auth_version,
            os_options=dict(self._auth.os_options),
            retries=0,
            timeout=self.timeout_s,
        )
        url, token = self._call(conn.get_auth, "")
        conn.close()
        if self.project:
            account = self.project if self.project.startswith("AUTH_") else f"AUTH_{self.project}"
            url = f"{str(url).rstrip('/').rsplit('/', 1)[0]}/{account}"
        self._storage_url, self._token = str(url), str(token)

    def _give_back(self, conn: Connection) -> None:
        """Return a Connection whose stream ended to this thread's slot (or close it)."""
        if self._local.conn is None:
            self._local.conn = conn
        else:
            conn.close()

    def _conn(self) -> Connection:
        """The calling thread's Connection (never one that is streaming a body)."""
        if self._local.conn is None:
            self._local.conn = self._new_connection()
        return self._local.conn

    # -- the translation boundary ------------------------------------------------------------

    def _where(self, key: str) -> str:
        return self.uri(key) if key else f"swift://{self.project or ''}/{self.container}"

    # -- ObjectSource ------------------------------------------------------------------------

    def uri(self, key: str) -> str:
        return f"swift://{self.project or ''}/{self.container}/{key}"

    def stat(self, key: str) -> ObjectInfo:
        headers = self._call(lambda: self._conn().head_object(self.container, key), key)
        return self._info(key, headers)

    @staticmethod
    def _info(key: str, headers: dict[str, str]) -> ObjectInfo:
        etag = headers.get("etag")
        plain = etag.strip('"') if etag else None
        extra: dict[str, str] = {}
        if headers.get("x-static-large-object", "").lower() == "true":
            md5, note = None, "none: an SLO manifest's ETag hashes its segments' ETags"
            extra["manifest"] = "slo"
        elif headers.get("x-object-manifest"):
            md5, note = None, "none: a DLO manifest's ETag hashes its segments' ETags"
            extra["manifest"] = "dlo"
        elif plain and _MD5_HEX.match(plain):
            md5, note = plain, "md5: ETag of a plain object"
        else:
            md5, note = None, "none: the ETag is not an md5"
        return ObjectInfo(
            key=key,
            size=int(headers.get("content-length", 0)),
            etag=plain,
            version=etag,
            last_modified=_iso(headers.get("last-modified")),
            md5=md5,
            checksum_note=note,
            extra=extra,
        )

    def read(
        self, key: str, *, start: int = 0, length: int | None = None, pin: ObjectInfo | None = None
    ) -> StreamContext:
        info = pin or self.stat(key)
        end = range_end(start, length, info.size)
        if end == start:
            return StreamContext(CountedStream(iter(()), expected=0, what="", guard=self._nothing))
        headers = {"Range": f"bytes={start}-{end - 1}"}
        if info.version:
            headers["If-Match"] = info.version
        # The stream takes the thread's Connection out of its slot, so that anything else
        # this thread does while the body is read gets another Connection.
        conn = self._local.conn or self._new_connection()
        self._local.conn = None

        def get() -> tuple[dict[str, str], Any]:
            return conn.get_object(  # type: ignore[no-any-return]
                self.container, key, resp_chunk_size=READ_CHUNK_BYTES, headers=headers
            )

        try:
            _, body = self._call(get, key, "read")
        except StoreError:
            self._give_back(conn)
            raise

        def done() -> None:
            body.close()
            self._give_back(conn)

        stream = CountedStream(
            iter(body),
            expected=end - start,
            what=self.uri(key),
            guard=lambda: self._sdk(key, "read"),
            on_close=done,
        )
        return StreamContext(stream)

    @contextmanager
    def _nothing(self) -> Iterator[None]:
        yield

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        marker = ""
        while True:
            _, entries = self._call(
                lambda m=marker: self._conn().get_container(  # type: ignore[misc]
                    self.container, prefix=prefix or None, limit=self.page_size, marker=m
                ),
                prefix,
            )
            if not entries:
                return
            for entry in entries:
                if "subdir" in entry:
                    continue
                slo_etag = entry.get("slo_etag")
                yield ObjectInfo(
                    key=entry["name"],
                    size=int(entry["bytes"]),
                    etag=(slo_etag or entry.get("hash") or "").strip('"') or None,
                    version=slo_etag or entry.get("hash"),
                    last_modified=entry.get("last_modified"),
                    checksum_note="unknown: a listing does not show DLO manifests; stat() tells",
                )
            marker = entries[-1].get("name") or entries[-1].get("subdir", "")

    # -- Store -------------------------------------------------------------------------------

    def create(self, key: str, path: Path, *, size: int, md5: str | None = None) -> None:
        if size < self.multipart_threshold_bytes:
            self._put_plain(key, path, size, md5)
        else:
            self._put_slo(key, path, size)

    def _put_plain(self, key: str, path: Path, size: int, md5: str | None) -> None:
        def put() -> None:
            with path.open("rb") as fh:
                self._conn().put_object(
                    self.container, key, fh, content_length=size, etag=md5,
                    headers={"If-None-Match": "*"},
                )  # fmt: skip

        self._call(put, key, "create")

    def _put_slo(self, key: str, path: Path, size: int) -> None:
        if self._exists(key):  # saves sending a large file whose key is taken
            raise AlreadyExists(f"{self.uri(key)}: the object already exists")
        self._call(lambda: self._conn().put_container(self.segment_container), key)
        upload = uuid.uuid4().hex  # segment names unique to this upload

        def send(part: Part, data: bytes) -> dict[str, Any]:
            name = f"{key}/{upload}/{part.number - 1:08d}"
            md5 = hashlib.md5(data).hexdigest()  # noqa: S324
            self._call(
                lambda: self._conn().put_object(
                    self.segment_container, name, data, content_length=part.length, etag=md5
                ),
                name,
                "create",
            )
            return {"path": f"/{self.segment_container}/{name}", "etag": md5,
                    "size_bytes": part.length}  # fmt: skip

        def commit(sent: list[tuple[Part, dict[str, Any]]]) -> None:
            body = json.dumps([entry for _, entry in sent]).encode()
            self._call(
                lambda: self._conn().put_object(
                    self.container, key, body, query_string="multipart-manifest=put",
                    headers={"If-None-Match": "*"},
                ),
                key,
                "create",
            )  # fmt: skip

        def abort(sent: list[tuple[Part, dict[str, Any]]]) -> None:
            prefix = f"/{self.segment_container}/"
            self._delete_segments([entry["path"].removeprefix(prefix) for _, entry in sent])

        upload_parts(
            path, plan_parts(size, self.part_size_bytes, MAX_SEGMENTS), send=send, commit=commit,
            abort=abort, concurrency=self.concurrency, what=self.uri(key),
            thread_name="haul-swift-seg",
        )  # fmt: skip

    def _delete_segments(self, names: Sequence[str]) -> None:
        for name in names:
            try:
                self._delete_segment(name)
            except StoreError as exc:  # the original failure matters more
                log.warning("could not delete segment %s: %s", name, exc)

    def _delete_segment(self, name: str) -> None:
        self._call(lambda: self._conn().delete_object(self.segment_container, name), name)

    def _exists(self, key: str) -> bool:
        try:
            self.stat(key)
        except NotFound:
            return False
        return True

    def delete(self, key: str) -> bool:
        """An SLO manifest is deleted with its segments (``multipart-manifest=delete``)."""
        try:
            info = self.stat(key)
            query = "multipart-manifest=delete" if info.extra.get("manifest") == "slo" else None
            self._call(
                lambda: self._conn().delete_object(self.container, key, query_string=query), key
            )
        except NotFound:
            return False
        return True

    def put_record(self, key: str, data: bytes) -> None:
        md5 = hashlib.md5(data).hexdigest()  # noqa: S324
        self._call(
            lambda: self._conn().put_object(
                self.container, key, data, etag=md5, content_type="application/json"
            ),
            key,
        )

    def close(self) -> None:
        conn = self._local.conn
        if conn is not None:
            conn.close()
            self._local.conn = None


class SwiftStoreConfig(StoreConfigBase):
    type: Literal["swift"]
    auth_url: str
    auth_version: Literal["1.0", "3"] = "1.0"
    project: str
    container: Annotated[str, Field(min_length=1, max_length=256)]
    prefix: str = ""
    user_env: str = "ST_USER"
    key_env: str = "ST_KEY"


def from_config(
    name: str, cfg: SwiftStoreConfig, secrets: StoreSecrets, tuning: StoreTuning
) -> SwiftStore:
    """v1: ``user``/``key`` secrets (from ``user_env``/``key_env``); v3: the ``os_*`` secrets."""
    if cfg.auth_version == "3":
        options = {
            "project_name": secrets.get("os_project_name") or cfg.project,
            "user_domain_name": secrets.get("os_user_domain_name") or "Default",
            "project_domain_name": secrets.get("os_project_domain_name") or "Default",
        }
        if secrets.get("os_region_name"):
            options["region_name"] = secrets.get("os_region_name") or ""
        auth = SwiftAuth(
            auth_url=cfg.auth_url,
            auth_version="3",
            user=secrets.get("os_username") or secrets.get("user"),
            key=secrets.get("os_password") or secrets.get("key"),
            os_options=tuple(sorted((k, v) for k, v in options.items() if v)),
        )
    else:
        auth = SwiftAuth(
            auth_url=cfg.auth_url,
            auth_version="1",
            user=secrets.get("user"),
            key=secrets.get("key"),
        )
    return SwiftStore(
        name,
        cfg.container,
        auth,
        project=cfg.project,
        prefix=cfg.prefix,
        tuning=tuning,
    )


_KEYSTONE_ENV = (
    "OS_USERNAME",
    "OS_PASSWORD",
    "OS_USER_DOMAIN_NAME",
    "OS_PROJECT_DOMAIN_NAME",
    "OS_PROJECT_NAME",
    "OS_REGION_NAME",
)


def _secret_env(cfg: SwiftStoreConfig) -> dict[str, str]:
    return {"user": cfg.user_env, "key": cfg.key_env} | {v.lower(): v for v in _KEYSTONE_ENV}


def _owns(cfg: SwiftStoreConfig, secrets: StoreSecrets, url: ParsedURL) -> bool:
    return url.location == (cfg.project, cfg.container)


def _adhoc(url: ParsedURL) -> StoreConfigBase:
    project, container = url.location
    raise UnsupportedURL(
        f"swift://{project}/{container}/... needs a declared swift store for that project and "
        "container (Swift has no default endpoint to fall back to)"
    )


STORE_TYPE = StoreType(
    name="swift",
    scheme="swift",
    url_form="swift://project/container/object",
    location_parts=2,
    config=SwiftStoreConfig,
    build=from_config,
    owns=_owns,
    extra="swift",
    sdk_module="swiftclient",
    loggers=("swiftclient",),
    secret_env=_secret_env,
    adhoc=_adhoc,
)

__all__ = ["STORE_TYPE", "SwiftAuth", "SwiftStore", "SwiftStoreConfig", "from_config"]
