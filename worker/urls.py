"""Input URL forms (contract section 2), wildcard matching, and redaction.

``redact_url`` is what every log line, event, ``haul.log`` and ``inputs.json`` shows: userinfo
and credential-bearing query parameters (presigned S3/GCS/Azure signatures, tokens) are removed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import unquote, urlsplit

from worker.errors import UnsupportedURL
from worker.net.redact import redact_url
from worker.stores import registry

__all__ = [
    "WILDCARD_CHARS",
    "ParsedURL",
    "matches",
    "parse_input_url",
    "redact_url",
    "suffix_base",
    "wildcard_prefix",
    "wildcard_regex",
]

WILDCARD_CHARS = ("*", "?", "[")


@dataclass(frozen=True)
class ParsedURL:
    #: ``http``, ``https``, ``datum`` or a store type's scheme (:mod:`worker.stores.registry`)
    scheme: str
    #: the container path: (bucket,) for s3/gs, (account, container) for azure,
    #: (project, container) for swift, (host,) for http(s), (dataset,) for dataset,
    #: () for datum/file
    location: tuple[str, ...]
    #: the key inside the container (may hold wildcards); the datum id or alias; the dataset
    #: version; the file path
    key: str
    raw: str

    @property
    def has_wildcard(self) -> bool:
        return self.scheme not in {"http", "https", "datum", "dataset"} and any(
            c in self.key for c in ("*",)
        )


def parse_input_url(url: str) -> ParsedURL:
    """Split an input URL into scheme, container and key; raise UnsupportedURL when malformed."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise UnsupportedURL(f"not a URL: {redact_url(url)}")
    scheme = scheme.lower()
    if scheme in {"http", "https"}:
        try:
            parts = urlsplit(url)
            _ = parts.port  # a port that is not a number in 0-65535
        except ValueError as exc:
            raise UnsupportedURL(f"malformed URL {redact_url(url)}: {exc}") from None
        if not parts.hostname:
            raise UnsupportedURL(f"URL without a host: {redact_url(url)}")
        return ParsedURL(scheme, (parts.hostname,), url, url)
    if scheme == "datum":
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", rest):
            raise UnsupportedURL(f"not a datum id: {url}")
        return ParsedURL("datum", (), rest, url)
    if scheme == "dataset":
        name = r"[A-Za-z0-9._-]{1,64}"
        match = re.fullmatch(rf"({name})/({name})", rest)
        if not match or {".", ".."} & set(match.groups()):
            raise UnsupportedURL(f"not of the form dataset://<dataset>/<version>: {url[:200]}")
        return ParsedURL("dataset", (match[1],), match[2], url)
    if scheme == "file":
        if not rest.startswith("/"):
            raise UnsupportedURL(f"file URLs must be absolute: {url}")
        return ParsedURL("file", (), unquote(rest), url)
    kind = registry.by_scheme(scheme)
    if kind is None:
        raise UnsupportedURL(f"unsupported URL scheme {scheme!r} in {redact_url(url)}")
    segments = kind.location_parts
    parts_list = rest.split("/", segments)
    if len(parts_list) <= segments or not all(parts_list[:segments]) or not parts_list[-1]:
        raise UnsupportedURL(f"{redact_url(url)} is not of the form {kind.url_form}")
    if any("*" in part for part in parts_list[:segments]):
        # The SDKs refuse such a name with their own validation error, which says nothing.
        raise UnsupportedURL(
            f"{redact_url(url)}: a wildcard expands in the key part only ({kind.url_form})"
        )
    return ParsedURL(scheme, tuple(parts_list[:segments]), parts_list[segments], url)


def wildcard_prefix(key: str) -> str:
    """The literal part of ``key`` before its first wildcard (what a listing can ask for)."""
    idx = min((key.find(c) for c in ("*",) if c in key), default=len(key))
    return key[:idx]


def suffix_base(key: str) -> str:
    """The folder part before the first wildcard: ``keep_directories=suffix`` keeps what follows."""
    prefix = wildcard_prefix(key)
    return prefix[: prefix.rfind("/") + 1] if "/" in prefix else ""


@lru_cache(maxsize=256)
def wildcard_regex(pattern: str) -> re.Pattern[str]:
    """``*`` matches within one path segment, ``**`` across segments (``**/`` also matches none)."""
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out), re.DOTALL)


def matches(pattern: str, key: str) -> bool:
    return wildcard_regex(pattern).fullmatch(key) is not None
