"""haul's Celery app with a test hook on the address guard (`-A tests.hostile.guarded_app`).

The test HTTP server listens on loopback only, so the literal host ``127.0.0.1`` (the server's
own URLs) plays the one public host; every other name and address, including the other textual
forms of 127.0.0.1 (``127.1``, ``0x7f000001``, ``[::ffff:127.0.0.1]``...), goes through the
real guard with ``allow_private_addresses = false``. A redirect from the "public" server to any
of them is therefore judged exactly as a real public server's redirect would be.
"""

from __future__ import annotations

import sys

from worker.net import guard as netguard

_real_resolve = netguard.resolve
PUBLIC_HOST = "127.0.0.1"


def _resolve(host: str, port: int, *, allow_private: bool) -> list[str]:
    if host == PUBLIC_HOST:
        return [PUBLIC_HOST]
    return _real_resolve(host, port, allow_private=allow_private)


def _install() -> None:
    netguard.resolve = _resolve
    # Modules imported before the hook hold the real function under their own name.
    for name, module in list(sys.modules.items()):
        if name.startswith("worker.") and getattr(module, "resolve", None) is _real_resolve:
            module.resolve = _resolve  # type: ignore[attr-defined]


_install()

from tasks.celery import app  # noqa: E402

_install()

__all__ = ["app"]
