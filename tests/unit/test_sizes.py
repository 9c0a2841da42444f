"""Sizes are decimal with one decimal, bytes under 1 kB (contract section 3)."""

import pytest

from worker.sizes import format_size


@pytest.mark.parametrize(
    ("size", "shown"),
    [
        (0, "0 B"),
        (512, "512 B"),
        (999, "999 B"),
        (1000, "1.0 kB"),
        (28_900, "28.9 kB"),
        (28_949, "28.9 kB"),
        (999_949, "999.9 kB"),
        (999_960, "1.0 MB"),
        (1_500_000, "1.5 MB"),
        (57_600_000_000, "57.6 GB"),
        (3_200_000_000_000, "3.2 TB"),
    ],
)
def test_format_size(size: int, shown: str) -> None:
    assert format_size(size) == shown
