"""One parted upload for every backend: S3 multipart, Azure blocks and Swift SLO segments.

The three services differ only in how a part is sent, how the parts are joined and what a
failure leaves behind, so a backend fills in three hooks and this module does the rest:

- ``send(part, data)`` uploads one part and returns its receipt (an ETag, a block id, a
  manifest entry);
- ``commit(sent)`` joins the parts, given ``(part, receipt)`` in part order; it carries the
  backend's conditional create, so a taken key fails here and nothing is overwritten;
- ``abort(sent)`` cleans up after any failure, given the parts that did arrive.

Parts are read with ``os.pread`` by the thread that sends them, so at most ``concurrency`` parts
are in memory. After the first failure no further part starts; the ones already on the wire
finish before ``abort`` runs, so nothing lands after the clean-up. A part shorter than planned
means the file changed while it uploaded: an :class:`~worker.errors.IntegrityError`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from worker.errors import IntegrityError
from worker.observability.context import in_current_context

R = TypeVar("R")


@dataclass(frozen=True)
class Part:
    #: 1-based, in file order
    number: int
    offset: int
    length: int


def plan_parts(size: int, part_size: int, max_parts: int) -> list[Part]:
    """Parts of ``part_size`` bytes (more when the service's part count limit needs it)."""
    part_size = max(part_size, -(-size // max_parts))
    return [
        Part(n + 1, off, min(part_size, size - off))
        for n, off in enumerate(range(0, size, part_size))
    ]


def upload_parts(
    path: Path,
    parts: Sequence[Part],
    *,
    send: Callable[[Part, bytes], R],
    commit: Callable[[list[tuple[Part, R]]], None],
    abort: Callable[[list[tuple[Part, R]]], None],
    concurrency: int,
    what: str,
    thread_name: str = "haul-part",
) -> None:
    """Send ``parts`` of ``path`` at most ``concurrency`` at a time, then commit; abort on any
    failure (including an interrupt) and re-raise it."""
    sent: dict[int, R] = {}
    lock = threading.Lock()
    failed = threading.Event()
    fd = os.open(path, os.O_RDONLY)

    def read(part: Part) -> bytes:
        data = os.pread(fd, part.length, part.offset)
        if len(data) != part.length:
            raise IntegrityError(f"{what}: the file changed size while uploading")
        return data

    def one(part: Part) -> None:
        if failed.is_set():
            return
        try:
            receipt = send(part, read(part))
        except BaseException:
            failed.set()  # here, not in the caller: the next part may start before it looks
            raise
        with lock:
            sent[part.number] = receipt

    def arrived() -> list[tuple[Part, R]]:
        with lock:
            return [(p, sent[p.number]) for p in parts if p.number in sent]

    try:
        try:
            with ThreadPoolExecutor(max(1, concurrency), thread_name_prefix=thread_name) as pool:
                futures: list[Future[None]] = [
                    pool.submit(in_current_context(one), p) for p in parts
                ]
                try:
                    for fut in as_completed(futures):
                        fut.result()
                except BaseException:
                    failed.set()
                    for fut in futures:
                        fut.cancel()
                    raise
        finally:
            os.close(fd)
        commit(arrived())
    except BaseException:
        abort(arrived())
        raise
