"""bench.rtt's goals table: the figures it prints are the rows' own, per round too."""

from __future__ import annotations

import argparse
import time

import pytest

from bench import data
from bench.measure import Sample
from bench.rtt import PARALLEL, Row, Tool, goals, quietest, report, startup_s


def _row(key: str, walls: list[float], inner: list[float] | None = None) -> Row:
    tool = Tool(key, key, lambda ctx, out, run: [])
    samples = [Sample(wall_s=w, cpu_s=0.5, maxrss_bytes=1 << 20, exit_code=0) for w in walls]
    return Row(tool, samples=samples, inner_s=list(inner or []))


def _line(table: list[str], name: str) -> list[str]:
    found = [line for line in table if line.startswith(f"| {name} |")]
    assert len(found) == 1, table
    return [cell.strip() for cell in found[0].strip("|").split("|")]


def test_the_engine_alone_is_judged_on_its_in_process_seconds_and_the_command_on_its_wall() -> None:
    count = data.SMALL_COUNT
    rows = {
        # wall 3.3 s, of which 0.3 s start-up; curl 3.1 s
        "haul-cold": _row("haul-cold", [3.2, 3.3, 3.4], [2.9, 3.0, 3.1]),
        "curl": _row("curl", [3.0, 3.1, 3.2]),
    }
    limit = PARALLEL / 0.020
    table = goals(rows, limit)

    command = _line(table, "cold ÷ curl -Z at 16")
    assert command[2] == f"{3.1 / 3.3:.2f}"
    assert command[3] == f"{3.0 / 3.2:.2f}-{3.2 / 3.4:.2f}"
    assert command[4] == "**no**"

    engine = _line(table, "engine alone: cold in-process ÷ curl -Z at 16")
    assert engine[2] == f"{3.1 / 3.0:.2f}"
    assert engine[4] == "yes"

    share = _line(table, "engine alone: cold in-process ÷ connections' limit")
    assert share[2] == f"{count / 3.0 / limit:.2f}"

    missing = _line(table, "warm ÷ cold")
    assert missing[2:] == ["n/a", "", "n/a"]


def test_the_best_peer_default_is_the_fastest_one_and_start_up_is_reported() -> None:
    rows = [
        _row("haul-cold", [3.3, 3.5], [3.0, 3.1]),
        _row("haul-default", [1.0, 1.1]),
        _row("curl-default", [1.2, 1.3]),
        _row("aria2c-default", [9.0, 9.5]),
    ]
    by_key = {r.tool.key: r for r in rows}
    table = goals(by_key, PARALLEL / 0.020)
    best = _line(table, "haul default ÷ best peer default (curl-default)")
    assert best[2] == f"{1.25 / 1.05:.2f}"
    assert best[4] == "yes"

    assert startup_s(by_key["haul-cold"]) == pytest.approx(0.35)
    args = argparse.Namespace(runs=2)
    doc = report({20.0: rows}, args, time.monotonic())
    assert "0.35 s in this run" in doc


def _noisy(noise: float, wall: float = 3.0) -> Sample:
    return Sample(wall_s=wall, cpu_s=1.0, maxrss_bytes=1, exit_code=0, other_cpu_s=noise * wall)


def test_a_noisy_run_is_run_again_and_the_quietest_counts() -> None:
    outcomes = [(_noisy(0.9), "ok", 3.1), (_noisy(0.3), "ok", 3.2), (_noisy(0.5), "ok", 3.3)]
    asked: list[int] = []

    def run(attempt: int) -> tuple[Sample | None, str, float | None]:
        asked.append(attempt)
        return outcomes[attempt]

    sample, status, inner = quietest(run, max_noise=0.25, retries=2)
    assert asked == [0, 1, 2]
    assert sample is not None and sample.noise == pytest.approx(0.3)
    assert (status, inner) == ("ok", 3.2)

    asked.clear()
    outcomes[0] = (_noisy(0.1), "ok", 3.0)
    assert quietest(run, max_noise=0.25, retries=2)[2] == 3.0
    assert asked == [0]


def test_a_failed_run_is_not_run_again() -> None:
    asked: list[int] = []

    def run(attempt: int) -> tuple[Sample | None, str, float | None]:
        asked.append(attempt)
        return (None, "failed (exit 1)", None) if attempt else (_noisy(0.9), "ok", 1.0)

    assert quietest(run, max_noise=0.25, retries=2) == (None, "failed (exit 1)", None)
    assert asked == [0, 1]
