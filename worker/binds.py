"""``host:port`` settings (``metrics_bind``, ``web_bind``): one parser for the settings check
and for the servers that listen on them.

``[::1]:8750`` is an IPv6 address (in brackets, as in a URL); ``:9808`` (no host, as
Prometheus exporters write it) is every IPv4 interface. Port 0 asks the system for a free
port (the servers log which one).
"""

from __future__ import annotations

ALL_INTERFACES = "0.0.0.0"  # what an empty host asks for


def split_bind(bind: str) -> tuple[str, int]:
    """``bind`` -> (host, port); ValueError when it is not ``host:port``."""
    host, sep, port = bind.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{bind!r} is not host:port")
    if host.startswith("[") and host.endswith("]") and len(host) > 2:
        return host[1:-1], int(port)
    if any(c in host for c in ":[]"):
        raise ValueError(f"{bind!r} is not host:port (an IPv6 address goes in brackets)")
    return host or ALL_INTERFACES, int(port)
