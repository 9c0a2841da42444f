"""``config/inputs.json``: what the execution finds where (contract section 3)."""

from __future__ import annotations

import errno
import json
import os
from dataclasses import dataclass
from pathlib import Path

from worker.errors import DestinationError, DiskFullError
from worker.hashing import Digests


@dataclass(frozen=True)
class InputFile:
    name: str
    path: str  # as the execution sees it: <inputs_mount>/<input>/<file>
    size: int
    uri: str  # redacted
    digests: Digests

    def as_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "path": self.path,
            "size": self.size,
            "uri": self.uri,
            "checksums": self.digests.as_dict(),
        }


def write_inputs_json(path: Path, inputs: dict[str, list[InputFile]]) -> None:
    """Write atomically: a reader sees the old file or the new one, never half of one.

    A failed write leaves no ``.tmp`` behind and says why as a haul error (``disk_full``, or
    ``destination_error`` with the system's reason).
    """
    doc = {name: {"files": [f.as_json() for f in files]} for name, files in inputs.items()}
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.unlink(missing_ok=True)
        # The execution owns this folder: never follow a link someone left at the temporary name.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(f"no space left for {path.name}") from None
        raise DestinationError(f"cannot write {path.name}: {exc.strerror or exc}") from None
