"""A small, fast run of ``bench/chaos``: kills and Redis restarts, every figure zero."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.support import servers

pytestmark = pytest.mark.integration


def _require(*names: str) -> None:
    for name in names:
        reason = servers.missing_reason(name)
        if reason is not None:
            if os.environ.get("CI") == "true":
                pytest.fail(f"{name} unavailable in CI: {reason}", pytrace=False)
            pytest.skip(f"{name} unavailable: {reason}")


def test_a_small_chaos_run_loses_nothing_and_shows_nothing_partial() -> None:
    """3 executions, 2 SIGKILLs and 2 Redis restarts: the script exits 0 (every figure zero,
    both restarts made) and prints each figure as 0."""
    _require("redis", "nginx")
    cmd = [
        sys.executable, "-m", "bench.chaos",
        "--executions", "3", "--kills", "2", "--seed", "3", "--big-mib", "4",
        "--min-gap-s", "0.3", "--max-gap-s", "1.5", "--max-seconds", "150",
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, check=False)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr[-3000:]
    assert "redis restarts             2" in out, out
    for figure in (
        "lost executions",
        "partial files seen",
        "duplicate datums",
        "conflicting records",
        "events, id repeated w/ other data",
    ):
        assert re.search(rf"^  {re.escape(figure)} +0$", out, re.M), out
    assert re.search(r"^  kills made +2 ", out, re.M), out
