"""Refusing http(s) inputs that point at this machine or its private networks.

With ``allow_private_addresses = false`` (the default) a URL whose host resolves to a loopback,
private, link-local (cloud metadata at 169.254.169.254), shared, multicast, reserved or
unspecified address is refused. The check runs on the address that is actually connected to
(:func:`resolve`, called by every client right before it connects), after DNS resolution and on
every redirect hop, so neither DNS rebinding nor a redirect can lead a download to a private
address.
"""

from __future__ import annotations

import ipaddress
import socket

from worker.errors import ForbiddenAddress, TransientError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def is_public(addr: IPAddress) -> bool:
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return not (
        addr.is_private
        or addr.is_loopback
        or addr.is_link_local
        or addr.is_multicast
        or addr.is_reserved
        or addr.is_unspecified
        or (
            isinstance(addr, ipaddress.IPv4Address)
            and addr in ipaddress.ip_network("100.64.0.0/10")
        )
    )


def resolve(host: str, port: int, *, allow_private: bool) -> list[str]:
    """Resolve ``host`` and return addresses to connect to; refuse non-public ones."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise TransientError(f"cannot resolve host {host!r}: {exc.strerror}") from None
    addrs: list[str] = []
    for info in infos:
        ip = str(info[4][0]).split("%", 1)[0]
        if ip not in addrs:
            addrs.append(ip)
    if not allow_private:
        for ip in addrs:
            if not is_public(ipaddress.ip_address(ip)):
                raise ForbiddenAddress(
                    f"refusing {host!r}: it resolves to the non-public address {ip} "
                    "(set allow_private_addresses = true to allow loopback, private and "
                    "link-local addresses)"
                )
    return addrs
