"""The small record beside a ``.haul-part`` file that lets a redelivered download continue.

``<dest>.haul-part.json`` holds the object's version token, its size, the chunk size and the
chunks already written, as runs ``[[first, end), ...]`` so it stays small for 10 GB objects. It
is replaced atomically (write a temporary file, rename) every few chunks; nothing is fsync-ed,
which is enough for a killed process (the page cache survives it). After a reboot the part file
may have lost data the record claims, so the record also holds the boot id and is ignored after a
reboot.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
_FORMAT = 1


def boot_id() -> str:
    try:
        return _BOOT_ID.read_text().strip()
    except OSError:
        return ""


def _runs(done: set[int]) -> list[list[int]]:
    runs: list[list[int]] = []
    for i in sorted(done):
        if runs and runs[-1][1] == i:
            runs[-1][1] = i + 1
        else:
            runs.append([i, i + 1])
    return runs


def record_tmp(record: Path) -> Path:
    """Where a new version of the record is written before it replaces the old one."""
    return record.with_name(record.name + ".tmp")


def drop_record(record: Path) -> None:
    """Remove the record and a temporary one a killed process may have left."""
    record.unlink(missing_ok=True)
    record_tmp(record).unlink(missing_ok=True)


@dataclass
class PartRecord:
    path: Path
    version: str
    size: int
    chunk_size_bytes: int
    done: set[int] = field(default_factory=set)
    boot: str = field(default_factory=boot_id)

    def matches(self, version: str | None, size: int, chunk_size_bytes: int) -> bool:
        return (
            version is not None
            and self.version == version
            and self.size == size
            and self.chunk_size_bytes == chunk_size_bytes
            and self.boot == boot_id()
        )

    def save(self) -> None:
        data = {
            "format": _FORMAT,
            "version": self.version,
            "size": self.size,
            "chunk_size_bytes": self.chunk_size_bytes,
            "done": _runs(self.done),
            "boot_id": self.boot,
        }
        tmp = record_tmp(self.path)
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(data, separators=(",", ":")))
        os.replace(tmp, self.path)

    @classmethod
    def load(cls, path: Path) -> PartRecord | None:
        """The record at ``path``, or None when absent or unreadable (then start over)."""
        try:
            data = json.loads(path.read_text())
            if data.get("format") != _FORMAT:
                return None
            done = {i for first, end in data["done"] for i in range(int(first), int(end))}
            return cls(
                path=path,
                version=str(data["version"]),
                size=int(data["size"]),
                chunk_size_bytes=int(data["chunk_size_bytes"]),
                done=done,
                boot=str(data["boot_id"]),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
