"""A thread that keeps looking at every final name haul writes and notes any that is not whole.

Final names are the files under ``executions/*/inputs/`` (not ``*.haul-part`` or its record)
and the objects under the local store's ``data/`` (not its ``.haul-tmp/``). Each one seen is
checked against the bytes it must have: its size, and three 4 KiB blocks at random offsets
(the first and last blocks among them), read with ``pread`` while haul may still be working.
A file whose name is final but whose bytes are not (short, zero-filled, another version's) is a
*partial file seen at a final name*; the contract says there must never be one.
"""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from worker.constants import PART_RECORD_SUFFIX, PART_SUFFIX

_BLOCK = 4096
#: path -> the bytes it must have, or None when nothing is known about it (not checked)
Expected = Callable[[Path], bytes | None]


@dataclass
class Watcher:
    roots: list[Path]
    expected: Expected
    interval_s: float = 0.05
    seed: int = 0
    samples: int = 0
    files_checked: int = 0
    partial: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="chaos-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def _loop(self) -> None:
        rnd = random.Random(self.seed)
        while not self._stop.wait(self.interval_s):
            self.samples += 1
            for root in self.roots:
                for path in _final_names(root):
                    self._check(path, rnd)

    def _check(self, path: Path, rnd: random.Random) -> None:
        want = self.expected(path)
        if want is None:
            return
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return  # gone meanwhile (a cleanup): nothing was seen
        try:
            size = os.fstat(fd).st_size
            self.files_checked += 1
            if size != len(want):
                self._note(path, f"{size} bytes, not {len(want)}")
                return
            last = max(0, size - _BLOCK)
            for offset in (0, last, rnd.randrange(0, last + 1)):
                if os.pread(fd, _BLOCK, offset) != want[offset : offset + _BLOCK]:
                    self._note(path, f"bytes at {offset} differ")
                    return
        finally:
            os.close(fd)

    def _note(self, path: Path, why: str) -> None:
        entry = f"{path}: {why}"
        if entry not in self.partial:
            self.partial.append(entry)


def _final_names(root: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in (".haul-tmp", "outputs", "config")]
        for name in filenames:
            if name.endswith((PART_SUFFIX, PART_RECORD_SUFFIX)):
                continue
            out.append(Path(dirpath) / name)
    return out
