"""Access to the dashboard (contract section 10).

Without ``HAUL_WEB_TOKEN`` the dashboard only binds to loopback addresses, and then needs no
credentials. With it, every request needs ``Authorization: Bearer <token>`` or the session
cookie that ``/login`` sets. The cookie holds an HMAC of the token, never the token, so it is
the same on every replica and a restart keeps people logged in; changing the token logs every
session out. Comparisons are constant-time (``hmac.compare_digest``).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import socket

from pydantic import SecretStr

from worker.binds import split_bind

COOKIE = "haul_session"
_SESSION_CONTEXT = b"haul-web-session-v1"


class BindRefused(ValueError):
    """``web_bind`` is not a loopback address and no token is set."""


def is_loopback(host: str) -> bool:
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    addresses = {info[4][0] for info in infos}
    return bool(addresses) and all(ipaddress.ip_address(a).is_loopback for a in addresses)


def check_bind(bind: str, token: SecretStr | None) -> tuple[str, int]:
    try:
        host, port = split_bind(bind)
    except ValueError as exc:
        raise ValueError(f"web_bind: {exc}") from None
    if token is None and not is_loopback(host):
        raise BindRefused(
            f"web_bind: {host} is not a loopback address; set HAUL_WEB_TOKEN to serve the "
            "dashboard beyond this machine"
        )
    return host, port


class Guard:
    """Checks a request's credentials against the token (or lets all in without one)."""

    def __init__(self, token: SecretStr | None) -> None:
        self._token = token.get_secret_value().encode() if token is not None else None

    @property
    def enabled(self) -> bool:
        return self._token is not None

    def session_value(self) -> str:
        assert self._token is not None
        return hmac.new(self._token, _SESSION_CONTEXT, hashlib.sha256).hexdigest()

    def token_ok(self, given: str) -> bool:
        if self._token is None:
            return True
        return hmac.compare_digest(given.encode(), self._token)

    def allows(self, authorization: str | None, cookie: str | None) -> bool:
        if self._token is None:
            return True
        if authorization and authorization[:7].lower() == "bearer ":
            return self.token_ok(authorization[7:].strip())
        if cookie:
            return hmac.compare_digest(cookie.encode(), self.session_value().encode())
        return False
