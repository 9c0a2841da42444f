"""Alias and dataset-version records against a real Redis and a local store (fast, in-process).

The concurrency test runs real threads released together by a barrier against one Redis, so
the alias script is exercised by truly simultaneous moves, not by a fake.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from redis import Redis

from tests.support.servers import RedisServer
from worker.errors import NotFound
from worker.models import Datum
from worker.pipeline.sidecar import read_sidecar
from worker.records import datasets
from worker.records.aliases import AliasIndex, alias_problem
from worker.records.datasets import (
    DatasetIndex,
    Member,
    VersionEntry,
    VersionRef,
    parse_entries,
    parse_version_uri,
)
from worker.records.datums import DatumIndex
from worker.records.reindex import reindex_store
from worker.stores.local import LocalStore

PROJECT = "proj"


@pytest.fixture
def client(redis_private: RedisServer) -> Redis[bytes]:
    return Redis.from_url(redis_private.url)


@pytest.fixture
def redis_url(redis_private: RedisServer) -> str:
    return redis_private.url


def _datum(n: int, execution: str = "exec-1", path: str | None = None, ms: int = 0) -> Datum:
    return Datum(
        datum_id=f"{n:032x}",
        project_id=PROJECT,
        execution_id=execution,
        path=path or f"f/{n:06d}.txt",
        uri=f"file:///x/{n}",
        key=f"data/{n}",
        store="default",
        size=n,
        md5="0" * 32,
        sha1="0" * 40,
        sha256=f"{n:064x}",
        created_at=f"2026-12-03T07:00:{ms // 1000:02d}.{ms % 1000:03d}Z",
    )


def test_alias_shapes() -> None:
    """Aliases follow the contract pattern; a 32-hex name is a datum id, never an alias."""
    assert alias_problem("model-best.v2_1") is None
    assert alias_problem("a" * 128) is None
    assert alias_problem("a" * 129) is not None
    assert alias_problem("1abc") is not None
    assert alias_problem("0123456789abcdef0123456789abcdef") is not None
    assert alias_problem("has space") is not None


def test_simultaneous_moves_keep_both_and_the_later_created_at_wins(
    client: Redis[bytes], redis_url: str
) -> None:
    """Eight threads move one alias at the same instant, in an order unrelated to their
    created_at: every move is in the history, and the alias points at the latest datum."""
    aliases = AliasIndex(client)
    datums = [_datum(n, f"exec-{n}", ms=(n * 37) % 8 * 10) for n in range(1, 9)]
    barrier = threading.Barrier(len(datums))
    errors: list[BaseException] = []

    def move(d: Datum) -> None:
        own = AliasIndex(Redis.from_url(redis_url))  # a connection of its own, as a worker has
        barrier.wait()
        try:
            own.move(d, "best")
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=move, args=(d,)) for d in reversed(datums)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not errors
    history = aliases.history(PROJECT, "best")
    assert len(history) == len(datums)
    latest = max(datums, key=lambda d: (d.created_at, d.datum_id))
    assert aliases.resolve(PROJECT, "best") == latest.datum_id
    assert [m.created_at for m in history] == sorted(m.created_at for m in history)
    # The same move again (a redelivery) changes nothing.
    again = aliases.move(datums[0], "best")
    assert len(aliases.history(PROJECT, "best")) == len(datums)
    assert again.current is (datums[0] is latest)


def test_alias_history_is_rebuilt_from_the_store(client: Redis[bytes], tmp_path: Path) -> None:
    """Moves written to the store come back, in order, after Redis lost them."""
    store = LocalStore("default", tmp_path)
    aliases = AliasIndex(client)
    first, second = _datum(1, ms=100), _datum(2, "exec-2", ms=200)
    for d in (first, second):
        move = aliases.move(d, "prod")
        assert aliases.write_store_record(store, move)
        assert not aliases.write_store_record(store, move)  # created once, never replaced
    client.flushdb()
    with pytest.raises(NotFound):
        aliases.resolve(PROJECT, "prod")
    assert aliases.reindex(store) == 2
    assert [m.datum_id for m in aliases.history(PROJECT, "prod")] == [
        first.datum_id,
        second.datum_id,
    ]
    assert aliases.history(PROJECT, "prod")[1].previous_datum_id == first.datum_id


def test_version_uris_and_entries() -> None:
    """Entries are strings or {uri, from}; bad ones become problems, good ones stay usable."""
    assert parse_version_uri("dataset://mnist/v2") == VersionRef("mnist", "v2")
    for bad in ("dataset://mnist", "dataset://a/b/c", "dataset://../v", "s3://a/b"):
        with pytest.raises(ValueError, match="dataset"):
            parse_version_uri(bad)
    entries, problems = parse_entries(
        [
            "dataset://a/1",
            {"uri": "dataset://a/2", "from": "dataset://a/1"},
            {"uri": "dataset://a/3", "extra": 1},
            42,
        ]
    )
    assert entries == [
        VersionEntry(VersionRef("a", "1")),
        VersionEntry(VersionRef("a", "2"), VersionRef("a", "1")),
    ]
    assert len(problems) == 2


def test_sidecar_keeps_good_fields_when_one_is_bad(tmp_path: Path) -> None:
    """An invalid alias is dropped with a problem; tags and other metadata are kept."""
    side = tmp_path / "m.metadata.json"
    side.write_text(
        '{"valohai.tags": ["t"], "valohai.alias": "0123456789abcdef0123456789abcdef", "k": 1,'
        ' "valohai.dataset-versions": ["dataset://d/v", "nope"]}'
    )
    meta = read_sidecar(side)
    assert meta.tags == ["t"] and meta.alias is None and meta.extra == {"k": 1}
    assert meta.dataset_versions == [VersionEntry(VersionRef("d", "v"))]
    assert len(meta.problems) == 2 and "datum id" in meta.problems[0]


def _fill(client: Redis[bytes], datums: list[Datum]) -> None:
    index = DatumIndex(client)
    for d in datums:
        index.add(d)


def _join(index: DatasetIndex, execution: str, entry: VersionEntry, d: Datum) -> str | None:
    return index.join(PROJECT, execution, entry, Member(d.path, d.datum_id), "t")


def test_versions_page_merge_seal_and_reindex(
    client: Redis[bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 250-file version is sealed in pages (of 100 here, to stay fast); a version from it
    replaces same-path files and drops a purged one; a sealed version refuses other
    executions; the store alone rebuilds both."""
    monkeypatch.setattr(datasets, "DATASET_PAGE_SIZE", 100)
    store = LocalStore("default", tmp_path)
    index = DatasetIndex(client)
    v1, v2 = VersionRef("big", "v1"), VersionRef("big", "v2")
    first = [_datum(n) for n in range(1, 251)]
    _fill(client, first)
    for d in first:
        assert _join(index, "exec-1", VersionEntry(v1), d) is None
    sealed = index.seal(store, PROJECT, "exec-1", v1)
    assert sealed.files == 250 and sealed.bytes == sum(range(1, 251))
    assert len(list((tmp_path / "datasets" / PROJECT / "big" / "v1" / "pages").iterdir())) == 3
    # Sealed: another execution cannot join; the same execution's members still can.
    late = _datum(9999, "exec-2")
    assert "sealed" in (_join(index, "exec-2", VersionEntry(v1), late) or "")
    assert _join(index, "exec-1", VersionEntry(v1), first[0]) is None

    # v2 from v1: two files replaced (same paths), one purged member dropped.
    replaced = [_datum(10_000 + n, "exec-2", path=first[n].path) for n in (0, 1)]
    _fill(client, [*replaced, late])
    DatumIndex(client).mark_purged(first[5], "t")
    entry = VersionEntry(v2, v1)
    for d in [*replaced, late]:
        assert _join(index, "exec-2", entry, d) is None
    conflict = _join(index, "exec-2", VersionEntry(v2), late)
    assert conflict is not None and "from" in conflict
    v3_from_nothing = VersionEntry(VersionRef("big", "v3"), VersionRef("big", "nope"))
    unknown = _join(index, "exec-3", v3_from_nothing, late)
    assert unknown is not None and "not an existing" in unknown
    assert index.claimed(PROJECT, "exec-2") == [v2]
    sealed2 = index.seal(store, PROJECT, "exec-2", v2)
    assert sealed2.files == 250 - 1 + 1
    ids = set(sealed2.datum_ids)
    assert {d.datum_id for d in replaced} <= ids and first[0].datum_id not in ids
    assert first[5].datum_id not in ids and late.datum_id in ids
    paths = [m.path for page in index.pages(PROJECT, v2) for m in page]
    assert paths == sorted(paths) and len(paths) == len(set(paths))

    # Redis lost everything: the store rebuilds both versions (datum records too).
    for d in [*first, *replaced, late]:
        DatumIndex(client).write_store_record(store, DatumIndex(client).get(d.datum_id))
    client.flushdb()
    with pytest.raises(NotFound):
        list(index.members(PROJECT, v1))
    done = reindex_store(client, store)
    assert done.dataset_versions == 2 and done.datums == 250 + 3
    assert sum(len(p) for p in index.members(PROJECT, v2)) == sealed2.files
    assert index.seal(store, PROJECT, "exec-2", v2).datum_ids == sealed2.datum_ids
