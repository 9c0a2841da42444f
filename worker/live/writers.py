"""Which files some process still has open for writing, from ``/proc/<pid>/fd``.

A program may make a file read-only (``fchmod``) while it still writes to it. Such a file is
not complete, so the watch stores it only once no process holds it open for writing: it is
looked up here just before storing, and the close (inotify ``IN_CLOSE_WRITE``, or the next
rescan) brings it back.

Only the processes whose ``/proc/<pid>/fd`` the worker may read are seen: run the watch as the
execution's user, or with ``CAP_SYS_PTRACE``, in the same PID namespace (the same pod). A writer
the worker cannot see is not detected; the file is then stored as soon as it is read-only, and
if it changes while being stored, the size check in the upload refuses it and the next round
stores the final bytes as a new datum.
"""

from __future__ import annotations

import os
from collections.abc import Set

_WRITE_MODES = (os.O_WRONLY, os.O_RDWR)


def _flags(pid: str, fd: str) -> int | None:
    try:
        with open(f"/proc/{pid}/fdinfo/{fd}", encoding="ascii") as info:
            for line in info:
                if line.startswith("flags:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        return None
    return None


def open_for_writing(files: Set[tuple[int, int]], proc: str = "/proc") -> set[tuple[int, int]]:
    """The (st_dev, st_ino) among ``files`` that a visible process has open for writing."""
    if not files:
        return set()
    found: set[tuple[int, int]] = set()
    try:
        pids = [p for p in os.listdir(proc) if p.isdigit()]
    except OSError:
        return found
    for pid in pids:
        fd_dir = f"{proc}/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                st = os.stat(f"{fd_dir}/{fd}")
            except OSError:
                continue
            ident = (st.st_dev, st.st_ino)
            if ident in files and ident not in found:
                flags = _flags(pid, fd)
                if flags is not None and flags & os.O_ACCMODE in _WRITE_MODES:
                    found.add(ident)
    return found
