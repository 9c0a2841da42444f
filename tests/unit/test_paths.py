"""Names and keys that try to leave their folder are refused."""

from pathlib import Path

import pytest

from worker.errors import UnsafePathError
from worker.paths import clean_relative, safe_join


@pytest.mark.parametrize(
    "rel",
    ["", "/etc/passwd", "../x", "a/../../x", "a//b", "./a", "a/./b", "a\\b", "a\x00b", "x" * 256],
)
def test_unsafe_relative_paths(rel: str) -> None:
    with pytest.raises(UnsafePathError):
        clean_relative(rel)


def test_safe_join_inside(tmp_path: Path) -> None:
    assert safe_join(tmp_path, "a/b.txt") == tmp_path / "a" / "b.txt"


def test_safe_join_refuses_symlinked_folder_leading_out(tmp_path: Path) -> None:
    base = tmp_path / "base"
    base.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (base / "link").symlink_to(outside)
    with pytest.raises(UnsafePathError):
        safe_join(base, "link/file")
