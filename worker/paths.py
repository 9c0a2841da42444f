"""Keeping names, ids and paths inside their folders.

Everything that turns a message field or a remote key into a local path goes through
:func:`safe_join`, which refuses absolute paths, ``..``, NUL bytes and empty segments, and checks
the result still lies under the base after normalisation.

Names that haul lays out or stores are also refused when they hold control characters or
bidirectional formatting characters (:func:`hidden_characters`): a line break splits a
``haul.log`` line, and a right-to-left override shows ``model\u202egpj.exe`` as
``modelexe.jpg`` on every page and terminal that displays it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath

from worker.errors import UnsafePathError

_MAX_SEGMENT_BYTES = 255
#: control characters (C0, DEL, C1) and Unicode's bidirectional formatting characters (marks,
#: embeddings, overrides, isolates)
_HIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def hidden_characters(name: str) -> list[str]:
    """The control and bidi formatting characters in ``name``, as ``U+XXXX``, in order."""
    if _HIDDEN.search(name) is None:
        return []
    return [f"U+{ord(ch):04X}" for ch in _HIDDEN.findall(name)]


def check_visible(name: str) -> None:
    """UnsafePathError when ``name`` holds control or bidi formatting characters."""
    hidden = hidden_characters(name)
    if hidden:
        shown = ", ".join(dict.fromkeys(hidden))
        raise UnsafePathError(
            f"name {name!r} holds control or bidi formatting characters ({shown})"
        )


def check_relative(rel: str) -> str:
    """``rel`` itself when it is a relative POSIX path without `..`, `.`, empty or absolute
    parts, else UnsafePathError (the string form of :func:`clean_relative`, for hot loops)."""
    if not rel or "\x00" in rel or "\\" in rel:
        raise UnsafePathError(f"unsafe path {rel!r}")
    if rel.startswith("/"):
        raise UnsafePathError(f"absolute path not allowed: {rel!r}")
    for part in rel.split("/"):
        if part in {"", ".", ".."}:
            raise UnsafePathError(f"path {rel!r} has an empty, '.' or '..' segment")
        if len(part) * 4 > _MAX_SEGMENT_BYTES and len(part.encode()) > _MAX_SEGMENT_BYTES:
            raise UnsafePathError(f"path segment longer than {_MAX_SEGMENT_BYTES} bytes in {rel!r}")
    return rel


def clean_relative(rel: str) -> PurePosixPath:
    """Relative POSIX path without `..`, `.`, empty or absolute parts, else UnsafePathError."""
    return PurePosixPath(*check_relative(rel).split("/"))


def safe_join(base: Path, rel: str) -> Path:
    """``base / rel`` when it stays inside ``base``; raise UnsafePathError otherwise."""
    target = base.joinpath(*clean_relative(rel).parts)
    base_real = os.path.realpath(base)
    # realpath of the parent: a symlinked folder inside base must not lead out of it.
    parent_real = os.path.realpath(target.parent)
    if parent_real != base_real and not parent_real.startswith(base_real + os.sep):
        raise UnsafePathError(f"path {rel!r} leaves its folder")
    return target
