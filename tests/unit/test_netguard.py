"""http(s) inputs to loopback, private and link-local addresses are refused by default."""

import ipaddress

import pytest

from worker.errors import ForbiddenAddress
from worker.net.guard import is_public, resolve


@pytest.mark.parametrize(
    "ip",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "::1",
        "fe80::1",
        "fc00::1",
        "0.0.0.0",
        "100.64.0.1",
        "::ffff:127.0.0.1",
        "224.0.0.1",
    ],
)
def test_non_public(ip: str) -> None:
    assert not is_public(ipaddress.ip_address(ip))


def test_public() -> None:
    assert is_public(ipaddress.ip_address("93.184.216.34"))


def test_resolve_refuses_localhost_names() -> None:
    with pytest.raises(ForbiddenAddress, match="allow_private_addresses"):
        resolve("localhost", 80, allow_private=False)
    assert resolve("localhost", 80, allow_private=True)
