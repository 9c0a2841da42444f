"""A bounded atheris run of each fuzz target (``bench/fuzz.py``): the message decoder and the
URL parser, a few thousand coverage-guided inputs each from the seeded shapes. Any exception
that escapes as something other than a rejection makes libFuzzer exit non-zero."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RUNS = 4000


@pytest.mark.parametrize("target", ["messages", "urls"])
def test_no_exception_escapes_as_anything_but_a_rejection(target: str, tmp_path: Path) -> None:
    """``python -m bench.fuzz <target> -runs=4000 -seed=1`` ends with libFuzzer's "Done"."""
    try:
        import atheris  # noqa: F401
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("atheris is a dev dependency; it must be installed in CI")
        pytest.skip("atheris is not installed")
    done = subprocess.run(
        [sys.executable, "-m", "bench.fuzz", target, f"-runs={RUNS}", "-seed=1",
         f"-artifact_prefix={tmp_path}/"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert f"Done {RUNS} runs" in output, output[-2000:]
    assert not list(tmp_path.glob("crash-*"))
