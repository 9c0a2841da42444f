"""A private nginx for the benchmark: free 127.0.0.1 port, own prefix dir, stopped by its PID.

It serves the data directory at ``/`` (HTML autoindex, which rclone's http remote reads) and
poses as a path-style S3 endpoint for one bucket: ``/<bucket>/<key>`` aliases the same directory,
unsigned (nginx ignores the SigV4 headers boto3 adds), with ranges and ``If-Match`` on its ETag.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

_CONF = """\
worker_processes 1;
daemon off;
pid {base}/nginx.pid;
error_log {base}/error.log warn;
{user}
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {base}/tmp/body; proxy_temp_path {base}/tmp/proxy;
    fastcgi_temp_path {base}/tmp/fcgi; uwsgi_temp_path {base}/tmp/uwsgi;
    scgi_temp_path {base}/tmp/scgi;
    default_type application/octet-stream;
    sendfile on; tcp_nopush on;
    keepalive_requests 100000;
    server {{
        listen 127.0.0.1:{port} backlog=1024;
        root {root};
        location / {{ autoindex on; }}
        location /{bucket}/ {{ alias {root}/; }}
        location = /healthz {{ return 200 "ok\\n"; }}
    }}
}}
"""


@dataclass(frozen=True)
class Nginx:
    base_url: str
    endpoint_url: str
    bucket: str
    pid: int


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/sbin/nginx") if os.access(p, os.X_OK)), None
    )


@contextmanager
def serve(root: Path, bucket: str, timeout_s: float = 15.0) -> Iterator[Nginx]:
    """Run nginx over ``root`` until the block ends; raise if it does not come up."""
    nginx = binary()
    if nginx is None:
        raise FileNotFoundError("nginx")
    base = Path(tempfile.mkdtemp(prefix="haul-bench-nginx-"))
    (base / "tmp").mkdir()
    port = free_port()
    user = "user root;" if os.geteuid() == 0 else ""
    conf = base / "nginx.conf"
    conf.write_text(_CONF.format(base=base, user=user, port=port, root=root, bucket=bucket))
    log = (base / "stdout.log").open("wb")
    proc = subprocess.Popen(
        [nginx, "-p", str(base), "-c", str(conf), "-e", str(base / "error.log")],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while not _ready(url + "/healthz"):
            if proc.poll() is not None or time.monotonic() > deadline:
                err = (base / "error.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"nginx did not start (rc={proc.poll()}): {err}")
            time.sleep(0.05)
        yield Nginx(url, url, bucket, proc.pid)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
        shutil.rmtree(base, ignore_errors=True)
