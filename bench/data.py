"""Benchmark inputs, generated once into ``bench/.data`` (gitignored) and reused.

- ``d1g.bin``: 1 GiB of random bytes, with its sha256 in ``d1g.bin.sha256``;
- ``small/f0000.bin`` ...: 2000 files of 10 KiB of random bytes;
- ``sparse10g.bin``: a 10 GiB sparse file (only with ``--big``; reads as zeros, costs no disk).

A file is rebuilt only when it is missing or has the wrong size; a marker beside the small-file
folder records that all of them were written.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

BIG_NAME = "d1g.bin"
BIG_BYTES = 1 * GiB
SMALL_DIR = "small"
SMALL_COUNT = 2000
SMALL_BYTES = 10 * KiB
SPARSE_NAME = "sparse10g.bin"
SPARSE_BYTES = 10 * GiB
_PIECE = 8 * MiB


@dataclass(frozen=True)
class Dataset:
    root: Path
    big_sha256: str

    @property
    def big(self) -> Path:
        return self.root / BIG_NAME

    @property
    def small_dir(self) -> Path:
        return self.root / SMALL_DIR

    @property
    def small_names(self) -> list[str]:
        return [f"f{i:04d}.bin" for i in range(SMALL_COUNT)]

    @property
    def sparse(self) -> Path:
        return self.root / SPARSE_NAME


def _write_random(path: Path, size: int) -> str:
    sha = hashlib.sha256()
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as fh:
        left = size
        while left:
            piece = os.urandom(min(_PIECE, left))
            sha.update(piece)
            fh.write(piece)
            left -= len(piece)
    tmp.replace(path)
    return sha.hexdigest()


def _big(root: Path) -> str:
    path, sums = root / BIG_NAME, root / (BIG_NAME + ".sha256")
    if path.exists() and path.stat().st_size == BIG_BYTES and sums.exists():
        return sums.read_text().strip()
    print(f"bench: writing {path} (1 GiB of random bytes, once)", flush=True)
    digest = _write_random(path, BIG_BYTES)
    sums.write_text(digest + "\n")
    return digest


def _small(root: Path) -> None:
    folder, marker = root / SMALL_DIR, root / (SMALL_DIR + ".complete")
    if marker.exists():
        return
    print(f"bench: writing {SMALL_COUNT} files of 10 KiB into {folder} (once)", flush=True)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(SMALL_COUNT):
        (folder / f"f{i:04d}.bin").write_bytes(os.urandom(SMALL_BYTES))
    marker.write_text(f"{SMALL_COUNT} x {SMALL_BYTES}\n")


def ensure_sparse(root: Path) -> Path:
    path = root / SPARSE_NAME
    if not path.exists() or path.stat().st_size != SPARSE_BYTES:
        with path.open("wb") as fh:
            fh.truncate(SPARSE_BYTES)
    return path


def ensure_small(root: Path) -> Path:
    """Only the small files (the round-trip bench needs no 1 GiB file); returns their folder."""
    root.mkdir(parents=True, exist_ok=True)
    _small(root)
    return root / SMALL_DIR


def ensure(root: Path) -> Dataset:
    root.mkdir(parents=True, exist_ok=True)
    digest = _big(root)
    _small(root)
    return Dataset(root, digest)
