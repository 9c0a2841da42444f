"""``haul.log``: the exact, human record of an execution's inputs (contract section 3).

One line per fact, ``HH:MM:SS <path>: <fact>`` in local time, e.g.::

    16:05:40 /valohai/inputs/dataset/train-labels.gz: downloaded, 28.9 kB
    16:05:40 /valohai/inputs/dataset/train-labels.gz: md5 sum: f76a0d20f478ea899cb9ff102548d868
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from worker.errors import DestinationError, DiskFullError, UnsafePathError
from worker.hashing import Digests
from worker.sizes import format_size


def stamp(clock: Callable[[], float] = time.time) -> str:
    return time.strftime("%H:%M:%S", time.localtime(clock()))


def file_lines(path: str, digests: Digests, clock: Callable[[], float] = time.time) -> list[str]:
    """The four seed-format lines for one file: size, then md5, sha1, sha256."""
    t = stamp(clock)
    return [
        f"{t} {path}: downloaded, {format_size(digests.size)}",
        f"{t} {path}: md5 sum: {digests.md5}",
        f"{t} {path}: sha1 sum: {digests.sha1}",
        f"{t} {path}: sha256 sum: {digests.sha256}",
    ]


class HaulLog:
    """Appends lines to ``haul.log`` (and optionally echoes them); safe across threads."""

    def __init__(self, path: Path | None, echo: TextIO | None = None) -> None:
        self.path = path
        self.echo = echo
        self._lock = threading.Lock()

    def write(self, lines: list[str]) -> None:
        text = "".join(line.replace("\n", " ") + "\n" for line in lines)
        with self._lock:
            if self.path is not None:
                # One O_APPEND write per fact keeps lines whole even with several writers.
                flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
                fd = _open(self.path, flags)
                try:
                    _write_all(fd, text.encode())
                finally:
                    os.close(fd)
            if self.echo is not None:
                self.echo.write(text)
                self.echo.flush()

    def file(self, path: str, digests: Digests) -> None:
        self.write(file_lines(path, digests))

    def line(self, path: str, fact: str) -> None:
        self.write([f"{stamp()} {path}: {fact}"])


def _open(path: Path, flags: int) -> int:
    try:
        return os.open(path, flags, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePathError(
                f"{path.name} is a symlink; haul does not write through it"
            ) from None
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(f"no space left for {path.name}") from None
        raise DestinationError(f"cannot write {path.name}: {exc.strerror or exc}") from None


def _write_all(fd: int, data: bytes) -> None:
    """Every byte, or an error: a short append (a nearly full disk) must not pass silently,
    since the facts are then marked as written."""
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFullError("no space left for haul.log") from None
            raise
        view = view[n:]
