"""Run one command and measure it: wall time, CPU seconds and peak RSS of its process tree.

The command runs in its own session; ``os.wait4`` returns the rusage of the child plus every
descendant it waited for, so ``user + sys`` covers a whole shell pipeline (the pipelines here
wait for all their processes). ``ru_maxrss`` is the largest single process of that tree. A run
that outlives its time limit is killed by its process group id (the PID of the child started
here).

Around each run the machine's total busy time is sampled too (:mod:`bench.machine`), so a result
taken while other work ran on this shared box says so.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import machine


@dataclass(frozen=True)
class Sample:
    wall_s: float
    cpu_s: float
    maxrss_bytes: int
    exit_code: int
    timed_out: bool = False
    #: CPU seconds the servers in ``servers`` (our nginx) spent during the run
    server_cpu_s: float = 0.0
    #: CPU seconds everything else on the machine used during the run (and VM steal)
    other_cpu_s: float = 0.0

    @property
    def noise(self) -> float:
        """Cores busy with other work, on average over the run."""
        return self.other_cpu_s / self.wall_s if self.wall_s > 0 else 0.0


def run(
    cmd: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    stdout: Path,
    stderr: Path,
    timeout_s: float,
    servers: Sequence[int] = (),
) -> Sample:
    with stdout.open("wb") as out, stderr.open("wb") as err:
        server_before, busy_before = machine.tree_cpu_s(servers), machine.busy_s()
        started = time.perf_counter()
        proc = subprocess.Popen(
            list(cmd),
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
        expired = threading.Event()

        def kill() -> None:
            expired.set()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

        timer = threading.Timer(timeout_s, kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        wall_s = time.perf_counter() - started
        busy = machine.busy_s() - busy_before
        server_cpu_s = machine.tree_cpu_s(servers) - server_before
    proc.returncode = os.waitstatus_to_exitcode(status)
    cpu_s = usage.ru_utime + usage.ru_stime
    return Sample(
        wall_s=wall_s,
        cpu_s=cpu_s,
        maxrss_bytes=usage.ru_maxrss * 1024,
        exit_code=proc.returncode,
        timed_out=expired.is_set(),
        server_cpu_s=server_cpu_s,
        other_cpu_s=max(0.0, busy - cpu_s - server_cpu_s),
    )
