"""The processes a chaos run owns: one haul worker (restarted when its main process is killed).

Redis and nginx come from the project's own helpers (``tests.support.servers.redis_server`` with
AOF on, ``bench.nginx.serve``); this module only adds what a kill needs: a worker whose main
process or pool children can be SIGKILLed, a restart of a dead main process, and, at the end,
SIGKILL of every process group it ever started (orphaned pool children of a killed main process
finish their task and exit by themselves, but never outlive the run).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from tests.support.worker import ALL_QUEUES, worker_env

READY_TIMEOUT_S = 90.0


def children(pid: int) -> list[int]:
    """PIDs whose parent is ``pid`` (the prefork pool of a Celery main process)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        # the command name is in parentheses and may hold spaces: parse after the last ')'
        fields = stat[stat.rfind(b")") + 2 :].split()
        # a killed child stays a zombie until its parent reaps it: not a target any more
        if len(fields) > 1 and int(fields[1]) == pid and fields[0] != b"Z":
            out.append(int(entry))
    return out


class Worker:
    """``celery -A tasks worker`` in its own session; ``kill_*`` never touch anything else."""

    def __init__(
        self,
        redis_url: str,
        data_dir: Path,
        env: Mapping[str, str],
        log_path: Path,
        broker_url: str | None = None,
    ) -> None:
        self._env = worker_env(redis_url, data_dir, env, broker_url)
        self._log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._groups: list[int] = []
        self._lock = threading.Lock()
        self.starts = 0
        #: exits nobody caused (the worker died by itself), with its last critical log line
        self.crashes: list[str] = []

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def start(self) -> None:
        mark = self._log_path.stat().st_size if self._log_path.exists() else 0
        cmd = [
            sys.executable, "-m", "celery", "-A", "tasks", "worker",
            "-Q", ALL_QUEUES, "--loglevel", "INFO",
            "--hostname", f"chaos-{os.getpid()}-{self.starts}@%h",
            "--without-mingle", "--without-gossip",
        ]  # fmt: skip
        with self._log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                cmd,
                env=self._env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._groups.append(self._proc.pid)
        self.starts += 1
        self._wait_ready(mark)

    def _wait_ready(self, mark: int) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            with self._log_path.open("rb") as fh:
                fh.seek(mark)
                if b" ready." in fh.read():
                    return
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"worker exited at start; see {self._log_path}")
            time.sleep(0.1)
        raise RuntimeError(f"worker not ready in {READY_TIMEOUT_S:g} s; see {self._log_path}")

    def kill_child(self, pick: int) -> int | None:
        """SIGKILL one pool child (``pick`` chooses which); None when there is none yet."""
        main = self.pid
        kids = children(main) if main is not None else []
        if not kids:
            return None
        victim = sorted(kids)[pick % len(kids)]
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)
        return victim

    def kill_main_and_restart(self) -> int | None:
        """SIGKILL the main process only (its children are orphaned, as on a real crash), then
        start a new worker."""
        with self._lock:
            proc = self._proc
            victim = None
            if proc is not None and proc.poll() is None:
                victim = proc.pid
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
            elif proc is not None:
                # it had exited by itself before the supervisor saw it: still a crash
                self.crashes.append(f"exit {proc.returncode}: {self._last_critical()}")
            self.start()
            return victim

    def revive(self) -> bool:
        """Start a new worker if the main process exited by itself (what a supervisor such as
        systemd's ``Restart=always`` does); True when it had to."""
        with self._lock:
            proc = self._proc
            if proc is None or proc.poll() is None:
                return False
            self.crashes.append(f"exit {proc.returncode}: {self._last_critical()}")
            self.start()
            return True

    def _last_critical(self) -> str:
        with self._log_path.open("rb") as fh:
            lines = fh.read().decode(errors="replace").splitlines()
        critical = [line for line in lines if "critical" in line.lower()]
        return critical[-1][:300] if critical else "no CRITICAL line"

    def stop(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for group in self._groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)
