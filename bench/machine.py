"""How busy the machine is apart from the command being measured (the box is shared).

``/proc/stat`` gives the CPU time of every process plus the time the hypervisor stole; taking out
the measured tree's own CPU and our nginx's leaves what others used during the run, reported as
"noise" (cores busy on average; 0 is a quiet machine, 2 a fully contended one here).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path

_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def busy_s() -> float:
    """CPU seconds the whole machine spent not idle (steal counts as busy), since boot."""
    with open("/proc/stat") as fh:
        fields = [int(v) for v in fh.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) * _TICK_S


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(c) for c in text.split()]


def tree_cpu_s(pids: Iterable[int]) -> float:
    """user+sys of processes that are still running (a server and its workers)."""
    total = 0.0
    todo = list(pids)
    while todo:
        pid = todo.pop()
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) * _TICK_S
        todo += _children(pid)
    return total


def wait_quiet(max_wait_s: float, cores: float = 0.3, window_s: float = 0.5) -> float:
    """Wait until others use less than ``cores`` over one window, at most ``max_wait_s``.

    Returns the seconds waited. Our own nginx is idle between runs, so it does not count.
    """
    started = time.monotonic()
    while time.monotonic() - started < max_wait_s:
        before = busy_s()
        time.sleep(window_s)
        if (busy_s() - before) / window_s < cores:
            break
    return time.monotonic() - started


def prime_writes(folder: Path, size_bytes: int, piece_bytes: int = 1024 * 1024) -> None:
    """Write ``size_bytes`` to a scratch file in ``folder`` and delete it (not measured).

    On this VM's ext4, buffered writes of fresh data cost 2.6-3.4 CPU-s per GiB in the kernel,
    unless a file of about that size was deleted a few seconds before (then 0.2 s, the usual
    cost). Which case a tool hits would otherwise depend on timing; priming right before each
    run gives every tool the same, usual, cost. ``--cold-writes`` skips this.
    """
    path = folder / "prime-writes.tmp"
    buf = bytes(piece_bytes)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        left = size_bytes
        while left > 0:
            left -= os.write(fd, buf[: min(left, piece_bytes)])
    finally:
        os.close(fd)
        path.unlink()


def fresh_fs(at: Path, size_bytes: int) -> Callable[[], None] | None:
    """Mount a new, empty ext4 (with a journal) at ``at``; returns how to remove it again.

    None when that cannot be done here (not root, no ``mkfs.ext4`` or loop devices): the run
    then writes to the bench's own disk, and the header says so.

    Why: this VM's root file system is ext4 *without* a journal, where the inode allocator
    skips every inode deleted in the last 5 seconds (5 minutes while its inode table block is
    dirty), looking each one up in the buffer cache (``recently_deleted()`` in
    ``fs/ext4/ialloc.c``; the top kernel symbols of a small-file run in ``perf``). Creating 2000
    files there cost 0.06 s or 1.7 s depending on what the bench had deleted before, for every
    tool. A journaled ext4, as on most machines, skips no inodes; a new one per run makes every
    many-files run start from the same state.
    """
    mkfs = shutil.which("mkfs.ext4") or "/usr/sbin/mkfs.ext4"
    if os.geteuid() != 0 or not os.access(mkfs, os.X_OK):
        return None
    image = at.parent / (at.name + ".ext4")
    at.mkdir(parents=True, exist_ok=True)
    with open(image, "wb") as f:
        f.truncate(max(size_bytes, 256 * 1024 * 1024))
    made = subprocess.run([mkfs, "-q", "-F", str(image)], capture_output=True)
    mounted = (
        made.returncode == 0
        and subprocess.run(
            ["mount", "-o", "loop", str(image), str(at)], capture_output=True
        ).returncode
        == 0
    )
    if not mounted:
        image.unlink(missing_ok=True)
        return None
    (at / "lost+found").rmdir()  # the tools' output checks count what is there

    def remove() -> None:
        subprocess.run(["umount", str(at)], capture_output=True)
        image.unlink(missing_ok=True)

    return remove
