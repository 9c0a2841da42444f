"""A redirect cannot lead a download to a private address, on either HTTP client path.

The test server only listens on loopback, so 127.0.0.1 plays the "public" host here: the guard's
address policy is swapped for one that allows exactly 127.0.0.1 and nothing else.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.httpserver import TestHTTPServer, serve
from worker.errors import ForbiddenAddress
from worker.net import guard as netguard
from worker.stores.http import HttpSource


@pytest.fixture
def www(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestHTTPServer]:
    (tmp_path / "ok.txt").write_bytes(b"fine")
    monkeypatch.setattr(
        netguard, "is_public", lambda addr: addr == ipaddress.ip_address("127.0.0.1")
    )
    with serve(tmp_path) as srv:
        yield srv


@pytest.mark.parametrize("fast", [True, False])
def test_redirect_to_a_private_address_is_refused(www: TestHTTPServer, fast: bool) -> None:
    with HttpSource(allow_private=False, fast=fast) as src:
        assert src.stat(www.url("/ok.txt")).size == 4  # the "public" host itself is fine
        target = www.url("/ok.txt").replace("127.0.0.1", "127.0.0.2")
        with pytest.raises(ForbiddenAddress, match=re.escape("127.0.0.2")):
            src.stat(www.redirect_to_url(target))
        metadata = "http://169.254.169.254/latest/meta-data/"
        with pytest.raises(ForbiddenAddress, match=re.escape("169.254.169.254")):
            src.stat(www.redirect_to_url(metadata))
