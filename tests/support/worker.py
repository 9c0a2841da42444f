"""Start a real haul worker (``python -m celery -A tasks worker``) in a subprocess for a test.

::

    with start_worker(redis_url, tmp_path / "data",
                      extra_env={"HAUL_ALLOW_PRIVATE_ADDRESSES": "true"}) as w:
        ...            # w.pid, w.proc, w.log_path, w.kill(signal.SIGKILL), w.log_text()

The worker's environment is the test process's minus every ``HAUL_*`` variable, plus
``HAUL_REDIS_URL``, ``HAUL_DATA_DIR`` and ``extra_env``, so a developer's own settings never leak
in. It is ready when its log says ``ready.`` (Celery's own line), with a deadline; a worker that
exits or is not ready in time fails the test with the tail of its log. On exit it is stopped by
PID (SIGTERM, then SIGKILL), and whatever is left of its process group (prefork children) is
killed.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

ALL_QUEUES = "haul.inputs,haul.outputs,haul.control,haul.watch"
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
_counter = itertools.count(1)


class WorkerStartError(RuntimeError):
    pass


@dataclass
class WorkerProcess:
    proc: subprocess.Popen[bytes]
    log_path: Path
    hostname: str
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the worker's main process only (e.g. SIGKILL to simulate a crash)."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    @property
    def metrics_url(self) -> str:
        """``http://host:port`` of the worker's /metrics and /healthz (from its start line)."""
        m = re.search(r"metrics and health on (http://\S+)/metrics", self.log_text())
        if m is None:
            raise WorkerStartError(
                "the worker did not say where its metrics are:\n" + self.log_tail()
            )
        return m.group(1)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S, since: int = 0) -> None:
        """Wait until the log (from byte ``since``) says ``ready.``; raise with the log tail."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if " ready." in self.log_text()[since:]:
                return
            if self.proc.poll() is not None:
                raise WorkerStartError(
                    f"worker exited with code {self.proc.returncode}; log tail:\n" + self.log_tail()
                )
            time.sleep(0.05)
        raise WorkerStartError(
            f"worker not ready after {timeout_s:g} s; log tail:\n" + self.log_tail()
        )

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM, wait, SIGKILL; then SIGKILL what is left of its own process group."""
        if self.proc.poll() is None:
            self.kill(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill(signal.SIGKILL)
                self.proc.wait()
        # Prefork children of a killed main process may linger; they share its group id.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self._log is not None:
            self._log.close()
            self._log = None


def worker_env(
    redis_url: str,
    data_dir: Path,
    extra_env: Mapping[str, str] | None = None,
    broker_url: str | None = None,
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAUL_")}
    # Port 0: workers of parallel tests never fight over 9808; `metrics_url` finds the port.
    env.update(
        {
            "HAUL_REDIS_URL": redis_url,
            "HAUL_DATA_DIR": str(data_dir),
            "HAUL_METRICS_BIND": "127.0.0.1:0",
        }
    )
    if broker_url is not None and broker_url != redis_url:
        env["HAUL_BROKER_URL"] = broker_url
    env.update(extra_env or {})
    return env


@contextlib.contextmanager
def start_worker(
    redis_url: str,
    data_dir: Path,
    extra_env: Mapping[str, str] | None = None,
    concurrency: int = 1,
    queues: str = ALL_QUEUES,
    log_path: Path | None = None,
    ready_timeout_s: float = READY_TIMEOUT_S,
    broker_url: str | None = None,
    app: str = "tasks",
) -> Iterator[WorkerProcess]:
    """A real worker on ``redis_url`` with ``data_dir``; stopped (by PID) when the block ends.

    ``broker_url`` (default: ``redis_url``) may be a RabbitMQ vhost's ``amqp://`` URL;
    ``app`` another Celery app module built on haul's (the cost benchmark's).
    """
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    n = next(_counter)
    hostname = f"test-{os.getpid()}-{n}@%h"
    log_path = log_path or data_dir.parent / f"{data_dir.name}-worker-{n}.log"
    cmd = [
        sys.executable, "-m", "celery", "-A", app, "worker",
        "-Q", queues,
        "--concurrency", str(concurrency),
        "--loglevel", "INFO",
        "--hostname", hostname,
        "--without-mingle", "--without-gossip",
    ]  # fmt: skip
    log = log_path.open("ab")
    proc = subprocess.Popen(
        cmd,
        env=worker_env(redis_url, data_dir, extra_env, broker_url),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    worker = WorkerProcess(proc=proc, log_path=log_path, hostname=hostname, _log=log)
    try:
        worker.wait_ready(ready_timeout_s)
        yield worker
    finally:
        worker.stop()
