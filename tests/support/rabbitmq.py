"""The machine's RabbitMQ (127.0.0.1:5672, guest/guest) in a vhost of the test's own.

::

    with rabbitmq_vhost("haul-t-1234") as url:   # amqp://guest:guest@127.0.0.1:5672/haul-t-1234
        ...

The vhost is made with ``rabbitmqctl add_vhost`` (the management HTTP API is not enabled
here), guest is given rights on it, and it is deleted afterwards with everything in it: tests
never see each other's queues, and nothing is left on the broker.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator

HOST = "127.0.0.1"
PORT = 5672
USER = PASSWORD = "guest"
CTL_TIMEOUT_S = 60


def missing_reason() -> str | None:
    """Why the RabbitMQ tests cannot run here, or None."""
    if shutil.which("rabbitmqctl") is None:
        return "rabbitmqctl not found (Debian package rabbitmq-server)"
    try:
        with socket.create_connection((HOST, PORT), timeout=1.0):
            pass
    except OSError as exc:
        return f"nothing answers on {HOST}:{PORT}: {exc}"
    return None


def _ctl(*args: str) -> None:
    subprocess.run(
        ["rabbitmqctl", *args],
        check=True,
        capture_output=True,
        timeout=CTL_TIMEOUT_S,
    )


def new_vhost_name(prefix: str = "haul-t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@contextlib.contextmanager
def rabbitmq_vhost(name: str | None = None) -> Iterator[str]:
    """A fresh vhost for the block; yields its amqp:// URL."""
    vhost = name or new_vhost_name()
    _ctl("add_vhost", vhost)
    try:
        _ctl("set_permissions", "-p", vhost, USER, ".*", ".*", ".*")
        yield f"amqp://{USER}:{PASSWORD}@{HOST}:{PORT}/{vhost}"
    finally:
        with contextlib.suppress(subprocess.SubprocessError):
            _ctl("delete_vhost", vhost)
