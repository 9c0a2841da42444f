"""Turning an input's URLs into the list of objects to fetch and where each one goes.

``keep_directories`` (contract section 2): ``none`` keeps the file name, ``full`` the whole key
below the bucket/container (for http(s): the URL path), ``suffix`` the part of the key below the
folder that holds the first wildcard. ``datum://<alias>`` resolves to the alias's datum now;
``dataset://`` gives every member of the version by its path (section 9).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from worker.constants import DATASET_SCHEME
from worker.errors import HaulError, NoMatch, NotFound, UnsafePathError, UnsupportedURL
from worker.models import InputSpec
from worker.paths import check_relative, check_visible
from worker.pipeline.runtime import Runtime
from worker.records.aliases import AliasIndex, is_datum_id
from worker.records.datasets import DatasetIndex, VersionRef
from worker.retry import store_type_of
from worker.stores.base import ObjectInfo, ObjectSource, Store
from worker.stores.resolver import expand_wildcard
from worker.urls import (
    ParsedURL,
    parse_input_url,
    redact_url,
    suffix_base,
)

Skipped = list[tuple[str, str]]


@dataclass(frozen=True)
class PlannedFile:
    input: str
    #: the redacted URL of this one object (a wildcard's expansion names each object)
    url: str
    source: ObjectSource
    key: str
    info: ObjectInfo | None
    #: the file's path below inputs/<input>/
    rel: str


def _http_rel(url: str, keep: str) -> str:
    path = unquote(urlsplit(url).path)
    if keep == "full":
        rel = path.strip("/")
        return rel or (urlsplit(url).hostname or "index")
    return posixpath.basename(path.rstrip("/")) or (urlsplit(url).hostname or "index")


def _key_rel(key: str, keep: str, base: str) -> str:
    if keep == "full":
        return key
    if keep == "suffix":
        return key[len(base) :]
    return posixpath.basename(key)


def _checked(rel: str, url: str) -> str:
    try:
        checked = check_relative(rel)
    except UnsafePathError:
        raise UnsafePathError(
            f"{redact_url(url)} would be written to {rel!r}, which leaves the input folder"
        ) from None
    try:
        check_visible(checked)
    except UnsafePathError as exc:
        raise UnsafePathError(f"{redact_url(url)} cannot be laid out: {exc}") from None
    return checked


def _expand(runtime: Runtime, spec: InputSpec, raw: str, project_id: str) -> list[PlannedFile]:
    url = parse_input_url(raw)
    shown = redact_url(raw)
    if url.scheme in {"http", "https"}:
        rel = _http_rel(raw, spec.keep_directories)
        http = runtime.sources.http()
        return [PlannedFile(spec.name, shown, http, raw, None, _checked(rel, raw))]
    if url.scheme == "datum":
        return [_datum(runtime, spec, url, project_id)]
    source, key = runtime.sources.for_url(url)
    if url.has_wildcard:
        found = runtime.transfer.policy.call(
            lambda: expand_wildcard(source, key, raw, runtime.settings.max_wildcard_matches),
            store_type=store_type_of(source),
            what=f"listing {shown}",
        )
        base = suffix_base(key)
        return [
            PlannedFile(
                spec.name,
                redact_url(source.uri(info.key)),
                source,
                info.key,
                # A listing that cannot judge the checksum (S3: no encryption info; Swift: DLO
                # manifests look plain) is dropped, so the download stats and checks the md5.
                None if info.checksum_note.startswith("unknown") else info,
                _checked(_key_rel(info.key, spec.keep_directories, base), raw),
            )
            for info in found
        ]
    rel = _key_rel(key, spec.keep_directories, posixpath.dirname(key) + "/")
    return [PlannedFile(spec.name, shown, source, key, None, _checked(rel, raw))]


def _datum(runtime: Runtime, spec: InputSpec, url: ParsedURL, project_id: str) -> PlannedFile:
    """``datum://<id>``, or ``datum://<alias>``: the datum the alias points at right now."""
    datum_id = url.key
    if not is_datum_id(url.key):
        datum_id = AliasIndex(runtime.redis).resolve(project_id, url.key)
    try:
        datum = runtime.datums.get(datum_id)
    except NotFound:
        raise NotFound(f"{url.raw} is not a known datum") from None
    if datum.purged:
        shown = url.raw if datum_id == url.key else f"{url.raw} (datum {datum_id})"
        raise NotFound(f"{shown} was purged")
    store = runtime.sources.store(datum.store)
    rel = datum.path if spec.keep_directories == "full" else posixpath.basename(datum.path)
    return PlannedFile(spec.name, url.raw, store, datum.key, None, _checked(rel, url.raw))


def _dataset(
    runtime: Runtime, spec: InputSpec, url: ParsedURL, project_id: str, skipped: Skipped
) -> list[PlannedFile]:
    """Every member of a sealed version, laid out by its path (``full`` unless ``none`` is
    asked for), each named by its ``datum://<id>``; read page by page, in one pass."""
    ref = VersionRef(url.location[0], url.key)
    full = spec.keep_directories != "none" or "keep_directories" not in spec.model_fields_set
    files: list[PlannedFile] = []
    stores: dict[str, Store] = {}
    for page in DatasetIndex(runtime.redis).members(project_id, ref):
        for member, datum in page:
            shown = f"datum://{datum.datum_id}"
            if datum.purged:
                missing = NotFound(f"{ref.uri}: {member.path} ({shown}) was purged")
                if not spec.optional:
                    raise missing
                skipped.append((shown, f"optional input missing: {missing}"))
                continue
            rel = member.path if full else posixpath.basename(member.path)
            if datum.store not in stores:
                stores[datum.store] = runtime.sources.store(datum.store)
            try:
                check_relative(rel)
            except UnsafePathError:
                raise UnsafePathError(
                    f"{shown} would be written to {rel!r}, which leaves the input folder"
                ) from None
            files.append(PlannedFile(spec.name, shown, stores[datum.store], datum.key, None, rel))
    return files


def plan_input(
    runtime: Runtime, spec: InputSpec, project_id: str
) -> tuple[list[PlannedFile], Skipped]:
    """The files of one input, and (url, reason) of each missing file an optional input skips.

    ``project_id`` is where ``datum://<alias>`` and ``dataset://`` names are looked up.
    """
    files: list[PlannedFile] = []
    skipped: Skipped = []
    for raw in spec.urls:
        try:
            if raw.startswith(DATASET_SCHEME):
                url = parse_input_url(raw)
                files.extend(_dataset(runtime, spec, url, project_id, skipped))
                continue
            files.extend(_expand(runtime, spec, raw, project_id))
        except HaulError as exc:
            if not (spec.optional and isinstance(exc, NotFound | NoMatch)):
                exc.url = redact_url(raw)
                raise
            skipped.append((redact_url(raw), f"optional input missing: {exc}"))
    # The same object named twice (a URL and a wildcard that also matches it) is fetched once.
    files = list({(f.rel, f.url): f for f in files}.values())
    if spec.filename is not None:
        if len(files) > 1:
            raise UnsupportedURL(
                f"filename renames a single file, but the URLs give {len(files)} files"
            )
        files = [PlannedFile(f.input, f.url, f.source, f.key, f.info, spec.filename) for f in files]
    _check_destinations(files)
    return files, skipped


def _check_destinations(files: list[PlannedFile]) -> None:
    """Two files on one path, or a file where another needs a folder, fail the input."""
    seen = {f.rel: f.url for f in files}
    if len(seen) < len(files):
        clash = next(f for f in files if seen[f.rel] != f.url)
        raise UnsupportedURL(
            f"{seen[clash.rel]} and {clash.url} would both be written to "
            f"{clash.rel!r}; use keep_directories 'full' or 'suffix'"
        )
    for f in files:
        parts = f.rel.split("/")
        for depth in range(1, len(parts)):
            folder = "/".join(parts[:depth])
            if folder in seen:
                raise UnsupportedURL(
                    f"{seen[folder]} would be a file at {folder!r}, where {f.url} needs a folder"
                )
