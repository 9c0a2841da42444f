"""The results as markdown: one table of every row, then the issue's targets, met or not."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.measure import Sample
from bench.scenarios import Scenario, Tool

MiB = 1024 * 1024
GiB = 1024 * MiB
RSS_LIMIT_MIB = 150.0


@dataclass
class Row:
    scenario: Scenario
    tool: Tool
    status: str = "ok"
    samples: list[Sample] = field(default_factory=list)
    #: seconds the haul driver spent inside the transfer call (no interpreter start-up)
    inner_s: list[float] = field(default_factory=list)
    mode: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok" and bool(self.samples)

    def median(self, pick: Callable[[Sample], float]) -> float:
        return statistics.median(pick(s) for s in self.samples)

    @property
    def wall_s(self) -> float:
        return self.median(lambda s: s.wall_s)

    @property
    def mib_s(self) -> float:
        return self.scenario.total_bytes / MiB / self.wall_s

    @property
    def files_s(self) -> float:
        return self.scenario.file_count / self.wall_s

    @property
    def cpu_s(self) -> float:
        return self.median(lambda s: s.cpu_s)

    @property
    def rss_mib(self) -> float:
        return self.median(lambda s: s.maxrss_bytes) / MiB

    @property
    def noise(self) -> float:
        return self.median(lambda s: s.noise)

    @property
    def server_cpu_s(self) -> float:
        return self.median(lambda s: s.server_cpu_s)


@dataclass(frozen=True)
class Ceiling:
    mib_s: float
    cpu_s: float
    rss_mib: float
    noise: float


def _find(rows: list[Row], scenario: str, key: str) -> Row | None:
    for row in rows:
        if row.scenario.key == scenario and row.tool.key == key and row.ok:
            return row
    return None


def _fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _notes(row: Row) -> str:
    parts = [row.tool.note] if row.tool.note else []
    if row.inner_s:
        inner = statistics.median(row.inner_s)
        parts.append(f"{row.scenario.total_bytes / MiB / inner:,.0f} MiB/s in-process")
    if row.ok and row.server_cpu_s >= 0.05:
        parts.append(f"nginx {row.server_cpu_s:.2f} CPU-s")
    if row.ok and row.scenario.total_bytes > 2 * GiB:
        parts.append(f"{row.cpu_s / (row.scenario.total_bytes / GiB):.2f} CPU-s/GiB")
    return "; ".join(p for p in parts if p)


def _rss(value_mib: float, floor_mib: float) -> str:
    """A child starts with the bench's own high-water RSS (recorded at exec): at most that."""
    return f"<= {floor_mib:.0f}" if value_mib <= floor_mib + 0.5 else f"{value_mib:,.0f}"


def _line(row: Row, rows: list[Row], ceiling: Ceiling | None, floor_mib: float) -> str:
    scn = _cell(row.scenario.title)
    if not row.ok:
        return f"| {scn} | {_cell(row.tool.label)} | {row.status} | | | | | | | | {row.tool.note} |"
    haul = _find(rows, row.scenario.key, "haul")
    versus = f"{row.wall_s / haul.wall_s:.2f}x" if haul and not row.tool.haul else ""
    big = row.scenario.file_count == 1
    of_ceiling = f"{row.mib_s / ceiling.mib_s:.2f}" if ceiling and big else ""
    cells = [
        scn, _cell(row.tool.label), _fmt(row.mib_s, 0 if big else 1),
        _fmt(row.files_s, 2 if big else 0), _fmt(row.wall_s, 2), _fmt(row.cpu_s, 2),
        _rss(row.rss_mib, floor_mib), versus, of_ceiling, f"{row.noise:.2f}", _notes(row),
    ]  # fmt: skip
    return "| " + " | ".join(cells) + " |"


HEADER = (
    "| scenario | tool | MiB/s | files/s | wall s | CPU s | peak RSS MiB | haul ÷ tool "
    "| of ceiling | noise | notes |\n|---|---|--:|--:|--:|--:|--:|--:|--:|--:|---|"
)


def table(rows: list[Row], ceiling: Ceiling | None, floor_mib: float) -> str:
    lines = [HEADER]
    if ceiling:
        lines.append(
            f"| hashing ceiling | md5 ‖ sha1+sha256, hashlib, from memory "
            f"| {ceiling.mib_s:,.0f} | | {1024 / ceiling.mib_s:.2f} | {ceiling.cpu_s:.2f} "
            f"| {_rss(ceiling.rss_mib, floor_mib)} | | 1.00 | {ceiling.noise:.2f} "
            "| 2 threads, 8 MiB buffers, 1 GiB |"
        )
    lines += [_line(row, rows, ceiling, floor_mib) for row in rows]
    return "\n".join(lines)


def _ratio(a: Row | None, b: Row | None) -> float | None:
    return b.wall_s / a.wall_s if a and b else None


def _target(name: str, value: float | None, want: str, ok: Callable[[float], bool]) -> str:
    if value is None:
        return f"| {_cell(name)} | {want} | not measured | - |"
    name = _cell(name)
    return f"| {name} | {want} | {value:.2f} | {'yes' if ok(value) else '**no**'} |"


def targets(rows: list[Row], ceiling: Ceiling | None) -> str:
    http = _find(rows, "http", "haul")
    small = _find(rows, "small", "haul")
    s3 = _find(rows, "s3", "haul")
    big = _find(rows, "big", "haul")
    haul_rows = [r for r in rows if r.tool.haul and r.ok]
    worst_rss = max((r.rss_mib for r in haul_rows), default=None)
    lines = [
        "| target (issue 3) | wanted | measured | met |",
        "|---|---|--:|---|",
        _target("HTTP 1 GiB: haul ÷ aria2c -x8 + sums", _ratio(http, _find(rows, "http", "aria2c+sums")), ">= 3.5x", lambda v: v >= 3.5),  # noqa: E501
        _target("HTTP 1 GiB: haul ÷ curl | tee 3x openssl", _ratio(http, _find(rows, "http", "tee")), ">= 2.0x", lambda v: v >= 2.0),  # noqa: E501
        _target("HTTP 1 GiB: haul ÷ hashing ceiling", http.mib_s / ceiling.mib_s if http and ceiling else None, ">= 0.8", lambda v: v >= 0.8),  # noqa: E501
        _target("HTTP 1 GiB: haul CPU-s per GiB", http.cpu_s if http else None, "<= 2.8", lambda v: v <= 2.8),  # noqa: E501
        _target("2000 x 10 KiB: haul ÷ curl -Z", _ratio(small, _find(rows, "small", "curl-Z")), ">= 1.0x", lambda v: v >= 1.0),  # noqa: E501
        _target("2000 x 10 KiB: haul ÷ aria2c -j16", _ratio(small, _find(rows, "small", "aria2c-j16")), ">= 1.5x", lambda v: v >= 1.5),  # noqa: E501
        _target("S3 1 GiB: haul (3 hashes) ÷ boto3 (none)", _ratio(s3, _find(rows, "s3", "boto3")), ">= 1.0x", lambda v: v >= 1.0),  # noqa: E501
        _target("peak RSS of any haul row, MiB", worst_rss, f"<= {RSS_LIMIT_MIB:.0f}", lambda v: v <= RSS_LIMIT_MIB),  # noqa: E501
    ]  # fmt: skip
    if big:
        ratio = big.rss_mib / http.rss_mib if http else None
        lines.append(
            _target("peak RSS 10 GiB ÷ 1 GiB", ratio, "1.00 (± 5 %)", lambda v: abs(v - 1) <= 0.05)
        )
    return "\n".join(lines)


def document(meta: list[str], rows: list[Row], ceiling: Ceiling | None, floor_mib: float) -> str:
    return "\n".join(
        [
            "# haul benchmark",
            "",
            *meta,
            "",
            table(rows, ceiling, floor_mib),
            "",
            targets(rows, ceiling),
            "",
        ]
    )
