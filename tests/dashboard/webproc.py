"""``haul web`` as a subprocess for a test, stopped by its PID.

::

    with start_web(redis_url, data_dir, db_url) as web:
        httpx.get(web.url + "/api/health")
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

READY_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class WebProcess:
    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def web_env(redis_url: str, data_dir: Path, db_url: str, extra: Mapping[str, str] | None = None
            ) -> dict[str, str]:  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAUL_")}
    env |= {"HAUL_REDIS_URL": redis_url, "HAUL_DATA_DIR": str(data_dir),
            "HAUL_WEB_DATABASE_URL": db_url}  # fmt: skip
    return env | dict(extra or {})


def spawn_web(
    redis_url: str, data_dir: Path, db_url: str, extra_env: Mapping[str, str] | None = None,
    bind: str | None = None, log_path: Path | None = None,
) -> tuple[subprocess.Popen[bytes], str, Path]:  # fmt: skip
    port = free_port()
    bind = bind or f"127.0.0.1:{port}"
    log_path = log_path or data_dir / f"web-{port}.log"
    data_dir.mkdir(parents=True, exist_ok=True)
    log = log_path.open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "web", "--bind", bind],
        env=web_env(redis_url, data_dir, db_url, extra_env),
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    log.close()
    host, _, port_text = bind.rpartition(":")
    return proc, f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{port_text}", log_path


@contextlib.contextmanager
def start_web(
    redis_url: str, data_dir: Path, db_url: str, extra_env: Mapping[str, str] | None = None,
    bind: str | None = None, headers: Mapping[str, str] | None = None,
) -> Iterator[WebProcess]:  # fmt: skip
    proc, url, log_path = spawn_web(redis_url, data_dir, db_url, extra_env, bind)
    web = WebProcess(proc, url, log_path)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"haul web exited {proc.returncode}:\n{web.log_text()}")
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(url + "/api/health", headers=dict(headers or {}), timeout=2)
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"haul web not ready:\n{web.log_text()}")
            time.sleep(0.1)
        yield web
    finally:
        web.stop()
