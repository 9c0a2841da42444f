"""Change notification for a folder tree: inotify where the kernel has it, else rescans.

:class:`Notifier` answers one question, "is it worth scanning the folder again?", within a
timeout. With inotify (``inotify_simple``) it says yes when anything under the tree was
closed after writing, had its mode changed (the ``chmod 0444`` that marks a file done), or was
created, moved in or removed; new folders are watched as they appear. Watches are added with
``IN_DONT_FOLLOW | IN_ONLYDIR``, so a symlink never leads the watch out of the tree. Without
inotify (not Linux, ``fs.inotify.max_user_watches`` used up, a network file system that sends
no events), and after an event-queue overflow, it says yes every ``rescan_s``. With inotify a
full rescan still happens every ``rescan_s`` as a safety net for events a file system never
sends.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from types import TracebackType
from typing import Any

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, root: Path, rescan_s: float, *, use_inotify: bool = True) -> None:
        self.root = root
        self.rescan_s = rescan_s
        self._inotify: Any = None
        self._flags: Any = None
        self._dirs: dict[int, Path] = {}
        self._last_scan = 0.0
        if use_inotify:
            self._start_inotify()

    @property
    def uses_inotify(self) -> bool:
        return self._inotify is not None

    def _start_inotify(self) -> None:
        try:
            from inotify_simple import INotify, flags
        except ImportError:
            log.info("inotify_simple is not installed; rescanning %s", self.root)
            return
        try:
            self._inotify = INotify()
        except OSError as exc:
            log.info("inotify unavailable (%s); rescanning %s", exc, self.root)
            return
        self._flags = flags
        self._watch_tree(self.root)

    def _mask(self) -> int:
        f = self._flags
        return int(
            f.CLOSE_WRITE
            | f.ATTRIB
            | f.CREATE
            | f.MOVED_TO
            | f.MOVED_FROM
            | f.DELETE
            | f.DELETE_SELF
            | f.MOVE_SELF
            | f.DONT_FOLLOW
            | f.ONLYDIR
        )

    def _watch_tree(self, top: Path) -> None:
        for dirpath, dirnames, _files in os.walk(top, followlinks=False):
            self._watch(Path(dirpath))
            dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]

    def _watch(self, folder: Path) -> None:
        try:
            wd = self._inotify.add_watch(folder, self._mask())
        except OSError as exc:
            # Out of watches, or the folder went away meanwhile: rescans still find its files.
            log.debug("cannot watch %s: %s", folder, exc)
            return
        self._dirs[wd] = folder

    def wait(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s``; True when the tree should be scanned (now) again."""
        due_in = self.rescan_s - (time.monotonic() - self._last_scan)
        if due_in > 0:
            left = min(timeout_s, due_in)
            if not self._changed(left) and time.monotonic() - self._last_scan < self.rescan_s:
                return False
        self._last_scan = time.monotonic()
        return True

    def _changed(self, timeout_s: float) -> bool:
        if self._inotify is None:
            time.sleep(timeout_s)  # the fallback: nothing to wait on but the next rescan
            return False
        events = self._inotify.read(timeout=int(timeout_s * 1000))
        f = self._flags
        for ev in events:
            folder = self._dirs.get(ev.wd)
            if folder is not None and ev.mask & f.ISDIR and ev.mask & (f.CREATE | f.MOVED_TO):
                self._watch_tree(folder / ev.name)
            if ev.mask & f.IGNORED:
                self._dirs.pop(ev.wd, None)
        return bool(events)

    def close(self) -> None:
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
