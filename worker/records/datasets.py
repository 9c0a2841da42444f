"""Dataset versions: ``dataset://<dataset>/<version>``, sealed when their task ends (contract 9).

A version goes through two states, kept in Redis and in the store:

* **open**: the first ``store_outputs`` (or live watch) of an execution that names it *claims*
  it (one Lua script: a version belongs to one execution; its ``from`` is fixed by the first
  claim and must name a sealed version). Each datum that names it is added to
  ``haul:dataset:new:<project>:<dataset>:<version>`` (path -> datum id) as it is stored, so a
  redelivered task finds what the first delivery did.
* **sealed**: when ``store_outputs`` ends, the members (the task's datums plus, with ``from``,
  the older version's live datums whose paths no new file replaces) are written in pages of
  :data:`~worker.constants.DATASET_PAGE_SIZE`, sorted by path: to the store as
  ``<prefix>/datasets/<project>/<dataset>/<version>/pages/<n>.json``, then the header
  ``.../version.json`` with the store's conditional create (the seal: never replaced), then to
  Redis (a list of pages and the header hash). Nothing changes it afterwards; another execution
  that names it is refused.

Memory stays bounded by the task's own outputs plus one page: the older version is read page by
page and merged with the task's sorted members, and planning a version as an input reads it page
by page (one ``LINDEX`` and one ``MGET`` of the page's datum records per page).

The same execution naming a version again is the same task (a redelivery, or the watch and
``store_outputs`` of one execution): its datums join the open version. Once sealed, a datum of
that execution joins only if it is already a member.
"""

from __future__ import annotations

import heapq
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from redis import Redis

from worker.constants import (
    DATASET_PAGE_SIZE,
    DATASET_SCHEME,
    KEY_DATASET,
    KEY_DATASET_CLAIMS,
    KEY_DATASET_NEW,
    KEY_DATASET_PAGES,
    KEY_DATUM,
    STORE_DATASETS_DIR,
)
from worker.errors import NotFound
from worker.models import NAME_PATTERN, Datum
from worker.records.once import create_once
from worker.stores.base import Store, join_key

_NAME_RE = re.compile(NAME_PATTERN)
_RECORD_TTL_S = 30 * 24 * 3600
HEADER_NAME = "version.json"


@dataclass(frozen=True, order=True)
class VersionRef:
    dataset: str
    version: str

    @property
    def uri(self) -> str:
        return f"{DATASET_SCHEME}{self.dataset}/{self.version}"


def parse_version_uri(uri: str) -> VersionRef:
    """``dataset://<dataset>/<version>``; ValueError saying what is wrong."""
    if not uri.startswith(DATASET_SCHEME):
        raise ValueError(f"{uri[:140]!r} is not a dataset:// URI")
    parts = uri[len(DATASET_SCHEME) :].split("/")
    if len(parts) != 2 or not all(_NAME_RE.fullmatch(p) and p not in {".", ".."} for p in parts):
        raise ValueError(
            f"{uri[:140]!r} is not of the form dataset://<dataset>/<version> "
            f"(names matching {NAME_PATTERN})"
        )
    return VersionRef(parts[0], parts[1])


@dataclass(frozen=True)
class VersionEntry:
    """One entry of a sidecar's ``valohai.dataset-versions``."""

    target: VersionRef
    source: VersionRef | None = None


def parse_entry(item: Any) -> VersionEntry:
    """One entry: a ``dataset://`` URI, or ``{"uri": ..., "from": ...}``; ValueError if not."""
    if isinstance(item, str):
        return VersionEntry(parse_version_uri(item))
    if not isinstance(item, dict) or not isinstance(item.get("uri"), str):
        raise ValueError("an entry is a dataset:// URI or an object {uri, from}")  # noqa: TRY004
    extra = sorted(set(item) - {"uri", "from"})
    if extra:
        raise ValueError(f"unknown keys {', '.join(str(k) for k in extra)}")
    source = item.get("from")
    if source is not None and not isinstance(source, str):
        raise ValueError("'from' must be a dataset:// URI")
    return VersionEntry(
        parse_version_uri(item["uri"]), parse_version_uri(source) if source else None
    )


def parse_entries(raw: Any) -> tuple[list[VersionEntry], list[str]]:
    """The usable entries of ``valohai.dataset-versions``, and a problem per unusable one."""
    if not isinstance(raw, list):
        return [], ["valohai.dataset-versions must be a list"]
    entries: list[VersionEntry] = []
    problems: list[str] = []
    for item in raw:
        try:
            entries.append(parse_entry(item))
        except ValueError as exc:
            problems.append(f"valohai.dataset-versions: {exc}")
    return entries, problems


@dataclass(frozen=True, order=True)
class Member:
    path: str
    datum_id: str


@dataclass(frozen=True)
class Sealed:
    ref: VersionRef
    project_id: str
    execution_id: str
    datum_ids: list[str]
    files: int
    bytes: int


# KEYS[1]: header; KEYS[2]: the from version's header (KEYS[1] when none)
# ARGV[1]: execution; ARGV[2]: from URI or ""; ARGV[3]: time
_CLAIM = """
local owner = redis.call('HGET', KEYS[1], 'execution_id')
if not owner then
  if ARGV[2] ~= '' and redis.call('HGET', KEYS[2], 'state') ~= 'sealed' then
    return {'from_unknown', ''}
  end
  redis.call('HSET', KEYS[1], 'execution_id', ARGV[1], 'from', ARGV[2], 'state', 'open',
             'created_at', ARGV[3])
  return {'open', ''}
end
if owner ~= ARGV[1] then return {'taken', owner} end
local from = redis.call('HGET', KEYS[1], 'from')
if from ~= ARGV[2] then return {'from_conflict', from} end
return {redis.call('HGET', KEYS[1], 'state'), ''}
"""


def _suffix(project_id: str, ref: VersionRef) -> str:
    return f"{project_id}:{ref.dataset}:{ref.version}"


def _folder(prefix: str, project_id: str, ref: VersionRef) -> str:
    return join_key(prefix, STORE_DATASETS_DIR, project_id, ref.dataset, ref.version)


def _page_key(prefix: str, project_id: str, ref: VersionRef, n: int) -> str:
    return join_key(_folder(prefix, project_id, ref), "pages", f"{n:06d}.json")


def _text(raw: bytes | str | None) -> str | None:
    return raw.decode() if isinstance(raw, bytes) else raw


class DatasetIndex:
    def __init__(self, client: Redis[bytes]) -> None:
        self.client = client
        self._claim = client.register_script(_CLAIM)

    # ------------------------------------------------------------------ while storing
    def join(
        self, project_id: str, execution_id: str, entry: VersionEntry, member: Member, when: str
    ) -> str | None:
        """Add ``member`` to the version ``entry`` names; None, or why it cannot join."""
        ref = entry.target
        source = entry.source.uri if entry.source else ""
        if entry.source is not None and entry.source.dataset != ref.dataset:
            # Contract 9: "from" names an older version of the same dataset.
            return f"{ref.uri}: from {source} is not a version of dataset {ref.dataset}"
        from_header = (
            f"{KEY_DATASET}:{_suffix(project_id, entry.source)}"
            if entry.source
            else f"{KEY_DATASET}:{_suffix(project_id, ref)}"
        )
        raw: list[Any] = self._claim(
            keys=[f"{KEY_DATASET}:{_suffix(project_id, ref)}", from_header],
            args=[execution_id, source, when],
        )
        state, detail = (_text(x) or "" for x in raw)
        if state == "from_unknown":
            return f"{ref.uri}: from {source} is not an existing (sealed) dataset version"
        if state == "taken":
            return f"{ref.uri} is sealed: execution {detail} made it; it is never changed"
        if state == "from_conflict":
            was = detail or "no older version"
            return f"{ref.uri} is built from {was}; another entry says from {source or 'none'}"
        if state == "sealed":
            if self._is_member(project_id, ref, member):
                return None
            return f"{ref.uri} is sealed: its task ended; it is never changed"
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(f"{KEY_DATASET_NEW}:{_suffix(project_id, ref)}", member.path, member.datum_id)
        claims = f"{KEY_DATASET_CLAIMS}:{project_id}:{execution_id}"
        pipe.sadd(claims, f"{ref.dataset}/{ref.version}")
        pipe.expire(claims, _RECORD_TTL_S)
        pipe.execute()
        return None

    def join_many(
        self, project_id: str, execution_id: str, entry: VersionEntry, members: list[Member]
    ) -> str | None:
        """:meth:`join` for many members at once (one claim, then pages of ``HSET``)."""
        if not members:
            return None
        reason = self.join(project_id, execution_id, entry, members[0], "")
        if reason is not None:
            return reason
        key = f"{KEY_DATASET_NEW}:{_suffix(project_id, entry.target)}"
        for chunk in _chunks(members[1:], DATASET_PAGE_SIZE):
            self.client.hset(key, mapping={m.path: m.datum_id for m in chunk})
        return None

    def _is_member(self, project_id: str, ref: VersionRef, member: Member) -> bool:
        got = self.client.hget(f"{KEY_DATASET_NEW}:{_suffix(project_id, ref)}", member.path)
        if got is not None:
            return _text(got) == member.datum_id
        return any(m == member for page in self.pages(project_id, ref) for m in page)

    def claimed(self, project_id: str, execution_id: str) -> list[VersionRef]:
        """Every version this execution named, sorted."""
        raw = self.client.smembers(f"{KEY_DATASET_CLAIMS}:{project_id}:{execution_id}")
        refs = [VersionRef(*(_text(r) or "").split("/", 1)) for r in raw]
        return sorted(refs)

    # ------------------------------------------------------------------ sealing
    def seal(self, store: Store, project_id: str, execution_id: str, ref: VersionRef) -> Sealed:
        """Write the version's pages and header (store, then Redis); what it holds."""
        header = self._header(project_id, ref)
        if header.get("state") == "sealed":
            return self._sealed_view(project_id, ref, header)
        new = {
            (_text(k) or ""): (_text(v) or "")
            for k, v in self.client.hgetall(f"{KEY_DATASET_NEW}:{_suffix(project_id, ref)}").items()
        }
        source = parse_version_uri(header["from"]) if header.get("from") else None
        members = self._merged(project_id, new, source)
        datum_ids: list[str] = []
        total = 0
        pages = 0
        tmp = f"{KEY_DATASET_PAGES}:{_suffix(project_id, ref)}:building"
        self.client.delete(tmp)
        for page in _chunks(members, DATASET_PAGE_SIZE):
            body = json.dumps([[m.path, m.datum_id] for m, _ in page], separators=(",", ":"))
            store.put_record(_page_key(store.prefix, project_id, ref, pages), body.encode())
            self.client.rpush(tmp, body)
            datum_ids += [m.datum_id for m, _ in page]
            total += sum(size for _, size in page)
            pages += 1
        doc = {
            "project_id": project_id,
            "dataset": ref.dataset,
            "version": ref.version,
            "execution_id": execution_id,
            "from": header.get("from") or None,
            "created_at": header.get("created_at"),
            "files": len(datum_ids),
            "bytes": total,
            "pages": pages,
        }
        key = join_key(_folder(store.prefix, project_id, ref), HEADER_NAME)
        create_once(store, key, json.dumps(doc, sort_keys=True, indent=1).encode())
        self._seal_in_redis(project_id, ref, doc, tmp if pages else None)
        return Sealed(ref, project_id, execution_id, datum_ids, len(datum_ids), total)

    def _merged(
        self, project_id: str, new: dict[str, str], source: VersionRef | None
    ) -> Iterator[tuple[Member, int]]:
        """The task's members plus the older version's unreplaced live ones, by path."""
        mine = sorted(Member(p, d) for p, d in new.items())
        streams: list[Iterable[Member]] = [mine]
        if source is not None:
            older = (
                m for page in self.pages(project_id, source) for m in page if m.path not in new
            )
            streams.append(older)
        merged = heapq.merge(*streams, key=lambda m: m.path)
        for chunk in _chunks(merged, DATASET_PAGE_SIZE):
            for member, datum in zip(chunk, self._datums(chunk), strict=True):
                # A purged member of the older version does not carry over into a new one.
                if datum is not None and not (datum.purged and member.path not in new):
                    yield member, datum.size

    def _seal_in_redis(
        self, project_id: str, ref: VersionRef, doc: dict[str, Any], built: str | None
    ) -> None:
        suffix = _suffix(project_id, ref)
        pipe = self.client.pipeline(transaction=True)
        if built is not None:
            pipe.rename(built, f"{KEY_DATASET_PAGES}:{suffix}")
        else:
            pipe.delete(f"{KEY_DATASET_PAGES}:{suffix}")
        pipe.hset(
            f"{KEY_DATASET}:{suffix}",
            mapping={
                "execution_id": doc["execution_id"],
                "from": doc["from"] or "",
                "created_at": doc["created_at"] or "",
                "state": "sealed",
                "files": doc["files"],
                "bytes": doc["bytes"],
                "pages": doc["pages"],
            },
        )
        pipe.expire(f"{KEY_DATASET_NEW}:{suffix}", _RECORD_TTL_S)
        pipe.execute()

    def _sealed_view(self, project_id: str, ref: VersionRef, header: dict[str, str]) -> Sealed:
        ids = [m.datum_id for page in self.pages(project_id, ref) for m in page]
        return Sealed(
            ref,
            project_id,
            header["execution_id"],
            ids,
            int(header.get("files", len(ids))),
            int(header.get("bytes", 0)),
        )

    # ------------------------------------------------------------------ reading
    def _header(self, project_id: str, ref: VersionRef) -> dict[str, str]:
        raw = self.client.hgetall(f"{KEY_DATASET}:{_suffix(project_id, ref)}")
        return {(_text(k) or ""): (_text(v) or "") for k, v in raw.items()}

    def is_sealed(self, project_id: str, ref: VersionRef) -> bool:
        return self._header(project_id, ref).get("state") == "sealed"

    def pages(self, project_id: str, ref: VersionRef) -> Iterator[list[Member]]:
        """The sealed version's members, one page at a time, in path order."""
        key = f"{KEY_DATASET_PAGES}:{_suffix(project_id, ref)}"
        n = 0
        while (raw := self.client.lindex(key, n)) is not None:
            yield [Member(p, d) for p, d in json.loads(raw)]
            n += 1

    def members(self, project_id: str, ref: VersionRef) -> Iterator[list[tuple[Member, Datum]]]:
        """Each page with every member's datum record: NotFound when the version is unknown."""
        if not self.is_sealed(project_id, ref):
            raise NotFound(f"{ref.uri} is not a dataset version of project {project_id}")
        for page in self.pages(project_id, ref):
            datums = self._datums(page)
            missing = [m.datum_id for m, d in zip(page, datums, strict=True) if d is None]
            if missing:
                raise NotFound(f"{ref.uri}: datum {missing[0]} is not known (reindex the store?)")
            yield [(m, d) for m, d in zip(page, datums, strict=True) if d is not None]

    def _datums(self, page: list[Member]) -> list[Datum | None]:
        if not page:
            return []
        raw = self.client.mget([f"{KEY_DATUM}:{m.datum_id}" for m in page])
        return [None if r is None else Datum.model_validate_json(r) for r in raw]

    # ------------------------------------------------------------------ reindex
    def reindex(self, store: Store) -> int:
        """Load every sealed version kept in ``store`` into Redis; return how many."""
        count = 0
        root = join_key(store.prefix, STORE_DATASETS_DIR) + "/"
        for info in store.list(root):
            if not info.key.endswith("/" + HEADER_NAME):
                continue
            doc = json.loads(store.get_record(info.key))
            ref = VersionRef(doc["dataset"], doc["version"])
            tmp = f"{KEY_DATASET_PAGES}:{_suffix(doc['project_id'], ref)}:building"
            self.client.delete(tmp)
            for n in range(int(doc["pages"])):
                page = store.get_record(_page_key(store.prefix, doc["project_id"], ref, n))
                self.client.rpush(tmp, page)
            self._seal_in_redis(doc["project_id"], ref, doc, tmp if doc["pages"] else None)
            count += 1
        return count


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
