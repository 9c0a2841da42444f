"""Human sizes in the contract's shape: decimal units, one decimal, bytes under 1 kB."""

from __future__ import annotations

_UNITS = ("kB", "MB", "GB", "TB", "PB", "EB")


def format_size(size: int) -> str:
    """``512 B``, ``28.9 kB``, ``57.6 GB`` (decimal units, one decimal)."""
    if size < 1000:
        return f"{size} B"
    value = float(size)
    for unit in _UNITS:
        value /= 1000.0
        # Round first so 999_960 B shows as "1.0 MB", not "1000.0 kB".
        if round(value, 1) < 1000 or unit == _UNITS[-1]:
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")
