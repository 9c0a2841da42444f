"""``python -m bench``: run every scenario side by side and write the results table.

Each tool runs ``--runs`` times (round-robin across the tools of a scenario, so drift on a shared
machine hits them alike); the table reports medians. Outputs go to a scratch dir in the system
temp folder (``--work-dir`` to change it) and are deleted, with a ``sync``, after every run. Not
under ``bench/.data``: on this VM's ext4, creating files in a folder next to the 11 GiB of
generated inputs was measured at 500-800 us per file against 35 us elsewhere on the same disk,
which drowned the small-files scenario.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bench import data, machine, measure, nginx, scenarios
from bench.report import Ceiling, Row, document
from bench.scenarios import Context, Scenario, Tool

BENCH = Path(__file__).resolve().parent
PROJECT = BENCH.parent
DATA_DIR = BENCH / ".data"
RESULTS = BENCH / "results" / "latest.md"
BUCKET = "bench-bucket"
MiB = 1024 * 1024


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--runs", type=int, default=3, help="runs per tool; the median is reported")
    p.add_argument("--big", action="store_true", help="also fetch a 10 GiB sparse file (haul)")
    p.add_argument(
        "--only",
        default="",
        help="comma list of scenarios: http,local,s3,small,upload,big",
    )
    p.add_argument(
        "--haul-mode", choices=["auto", "cli", "run_fetch", "engine"], default="auto",
        help="how haul is run: the CLI, worker.cli.fetch.run_fetch, or the bare engine",
    )  # fmt: skip
    p.add_argument("--timeout-s", type=float, default=300.0, help="limit for one run")
    p.add_argument(
        "--settle-s", type=float, default=5.0,
        help="before each run, wait up to this long for other work on the machine to calm down",
    )  # fmt: skip
    p.add_argument(
        "--cold-writes", action="store_true",
        help="do not prime the file system's write path before each run (see bench/README.md)",
    )  # fmt: skip
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--keep", action="store_true", help="keep the scratch dir and logs")
    p.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="where the tools write (default: the system temp folder)",
    )
    return p.parse_args(argv)


# ---------------------------------------------------------------------------- environment


#: haul's own packages: compiled before a run, as ``pip install haul-worker`` leaves them
HAUL_PACKAGES = ("worker", "tasks", "dashboard", "bench/drivers")


def compile_haul() -> None:
    """Write haul's bytecode before anything is timed.

    An installed wheel has it (pip compiles at install); an editable checkout gets it at the
    first run, except where ``PYTHONDONTWRITEBYTECODE`` is set (this VM sets it). Without it
    every haul command compiled its ~60 modules from source at start: 0.1 s of each run
    measured here, a cost no installed haul pays. Stale files are rewritten, others kept.
    """
    import compileall

    for package in HAUL_PACKAGES:
        if not compileall.compile_dir(PROJECT / package, quiet=1):
            raise RuntimeError(f"cannot compile {package}")


def base_env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HAUL_", "AWS_")) and k.lower() not in {"http_proxy", "https_proxy"}
    }
    env.update(
        LC_ALL="C",
        NO_PROXY="127.0.0.1,localhost",
        AWS_ACCESS_KEY_ID="bench-dummy",
        AWS_SECRET_ACCESS_KEY="bench-dummy",  # nginx ignores the signature
        AWS_DEFAULT_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
    )
    return env


def detect_haul(forced: str) -> tuple[str, str]:
    haul_bin = str(Path(sys.executable).parent / "haul")
    if forced != "auto":
        return forced, haul_bin
    if Path(haul_bin).exists():
        probe = subprocess.run(
            [haul_bin, "fetch", "--help"], capture_output=True, cwd=PROJECT, timeout=60
        )
        if probe.returncode == 0:
            return "cli", haul_bin
    if importlib.util.find_spec("worker.cli.fetch") is not None:
        return "run_fetch", haul_bin
    return "engine", haul_bin


def missing(tool: Tool) -> str | None:
    for need in tool.needs:
        if need.startswith("py:"):
            if importlib.util.find_spec(need[3:]) is None:
                return f"not installed ({need[3:]})"
        elif shutil.which(need) is None:
            return f"not installed ({need})"
    return None


# ---------------------------------------------------------------------------- one run


def check_output(scn: Scenario, tool: Tool, out: Path, stdout: Path) -> str | None:
    found = sum(1 for p in out.rglob("*") if p.is_file() and p.stat().st_size == scn.file_bytes)
    if found != scn.file_count:
        return f"wrong output ({found}/{scn.file_count} files of {scn.file_bytes} B)"
    if scn.sha256 and tool.hashes and scn.sha256 not in stdout.read_text(errors="replace"):
        return "wrong output (sha256 not in its output)"
    return None


#: scenario key -> whether its many-file runs each had a new file system (machine.fresh_fs)
FRESH_FS: dict[str, bool] = {}


def once(scn: Scenario, tool: Tool, run: Path, logs: Path, env: dict[str, str],
         args: argparse.Namespace, tag: str,
         servers: list[int]) -> tuple[measure.Sample | None, str, float | None]:  # fmt: skip
    out = run / "out"
    out.mkdir(parents=True)
    remove_fs = None
    if scn.file_count > 1:
        remove_fs = machine.fresh_fs(out, 4 * scn.total_bytes)
        FRESH_FS[scn.key] = remove_fs is not None
    try:
        return _once(scn, tool, run, out, logs, env, args, tag, servers)
    finally:
        if remove_fs is not None:
            remove_fs()


def _once(scn: Scenario, tool: Tool, run: Path, out: Path, logs: Path, env: dict[str, str],
          args: argparse.Namespace, tag: str,
          servers: list[int]) -> tuple[measure.Sample | None, str, float | None]:  # fmt: skip
    full_env = {**env, **tool.env(run)}
    stdout, stderr = logs / f"{tag}.out", logs / f"{tag}.err"
    timeout_s = args.timeout_s
    kw = {"env": full_env, "cwd": PROJECT, "stdout": stdout, "stderr": stderr, "servers": servers}
    if tool.warmup:
        warm = measure.run(tool.argv(run), timeout_s=timeout_s, **kw)  # type: ignore[arg-type]
        if warm.exit_code != 0:
            return None, f"failed (warm-up exit {warm.exit_code})", None
        shutil.rmtree(out)
        out.mkdir()
        (run / "timing").unlink(missing_ok=True)
    machine.wait_quiet(args.settle_s)
    if not args.cold_writes:
        machine.prime_writes(run, scn.total_bytes + 64 * MiB)
    sample = measure.run(tool.argv(run), timeout_s=timeout_s, **kw)  # type: ignore[arg-type]
    if sample.timed_out:
        return None, f"timed out (> {timeout_s:.0f} s)", None
    if sample.exit_code != 0:
        return None, f"failed (exit {sample.exit_code})", None
    problem = check_output(scn, tool, out, stdout)
    if problem:
        return None, problem, None
    inner = None
    timing = run / "timing"
    if timing.exists():
        m = re.search(r"seconds=([\d.]+)", timing.read_text())
        inner = float(m.group(1)) if m else None
    return sample, "ok", inner


def _stderr_tail(logs: Path, tag: str) -> str:
    path = logs / f"{tag}.err"
    text = path.read_text(errors="replace").strip() if path.exists() else ""
    return "\n    ".join(text.splitlines()[-5:])


def measure_scenario(scn: Scenario, args: argparse.Namespace, work: Path, env: dict[str, str],
                     servers: list[int]) -> list[Row]:  # fmt: skip
    rows = [Row(scn, tool) for tool in scn.tools]
    for row in rows:
        row.status = missing(row.tool) or "ok"
    logs = work / "logs"
    for rnd in range(args.runs):
        # Each round starts with another tool: state that builds up over a scenario (caches,
        # the file system's) then favours no one.
        shift = rnd % len(rows)
        for i, row in [*enumerate(rows)][shift:] + [*enumerate(rows)][:shift]:
            if row.status != "ok":
                continue
            tag = f"{scn.key}-{row.tool.key}-{rnd}"
            run = work / f"run-{scn.key}-{i}-{rnd}"
            try:
                sample, status, inner = once(scn, row.tool, run, logs, env, args, tag, servers)
            finally:
                shutil.rmtree(run, ignore_errors=True)
                os.sync()
            if sample is None:
                row.status = status
                print(f"  {row.tool.label}: {status}\n    {_stderr_tail(logs, tag)}", flush=True)
                continue
            row.samples.append(sample)
            if inner is not None:
                row.inner_s.append(inner)
            rate = scn.total_bytes / MiB / sample.wall_s
            print(
                f"  [{rnd + 1}/{args.runs}] {row.tool.label}: {sample.wall_s:.2f} s, "
                f"{rate:,.0f} MiB/s, {scn.file_count / sample.wall_s:,.0f} files/s, "
                f"CPU {sample.cpu_s:.2f} s, RSS {sample.maxrss_bytes / MiB:.0f} MiB, "
                f"noise {sample.noise:.2f} cores",
                flush=True,
            )
    return rows


def hashing_ceiling(args: argparse.Namespace, work: Path, env: dict[str, str]) -> Ceiling:
    rates, cpus, rss, noise = [], [], [], []
    logs = work / "logs"
    for rnd in range(args.runs):
        tag = f"ceiling-{rnd}"
        cmd = [sys.executable, str(BENCH / "drivers" / "ceiling.py")]
        machine.wait_quiet(args.settle_s)
        sample = measure.run(cmd, env=env, cwd=PROJECT, stdout=logs / f"{tag}.out",
                             stderr=logs / f"{tag}.err", timeout_s=args.timeout_s)  # fmt: skip
        m = re.search(r"seconds=([\d.]+) bytes=(\d+)", (logs / f"{tag}.out").read_text())
        if sample.exit_code != 0 or not m:
            raise RuntimeError(f"hashing ceiling failed: {_stderr_tail(logs, tag)}")
        rates.append(int(m.group(2)) / MiB / float(m.group(1)))
        cpus.append(sample.cpu_s)
        rss.append(sample.maxrss_bytes / MiB)
        noise.append(sample.noise)
        print(f"  [{rnd + 1}/{args.runs}] ceiling: {rates[-1]:,.0f} MiB/s", flush=True)
    return Ceiling(statistics.median(rates), statistics.median(cpus), statistics.median(rss),
                   statistics.median(noise))  # fmt: skip


def haul_startup_s(args: argparse.Namespace, work: Path, env: dict[str, str]) -> float | None:
    """Interpreter start, haul's imports and settings: paid once by every ``haul fetch``."""
    code = "import worker.cli, worker.cli.fetch, worker.settings as s; s.load_settings()"
    walls = []
    for rnd in range(args.runs):
        logs = work / "logs"
        sample = measure.run([sys.executable, "-c", code], env=env, cwd=PROJECT,
                             stdout=logs / f"startup-{rnd}.out", stderr=logs / f"startup-{rnd}.err",
                             timeout_s=60)  # fmt: skip
        if sample.exit_code != 0:
            return None
        walls.append(sample.wall_s)
    return statistics.median(walls)


# ---------------------------------------------------------------------------- the whole run


def start_server(stack: contextlib.ExitStack) -> tuple[nginx.Nginx | None, str]:
    """nginx for the HTTP and S3 scenarios, or why there is none (those rows then say so)."""
    if nginx.binary() is None:
        return None, "not installed (nginx)"
    try:
        return stack.enter_context(nginx.serve(DATA_DIR, BUCKET)), ""
    except RuntimeError as exc:
        print(f"bench: {exc}", flush=True)
        return None, "failed (nginx did not start)"


def build_scenarios(ctx: Context, work: Path, args: argparse.Namespace) -> list[Scenario]:
    wanted = {s for s in args.only.split(",") if s} or {"http", "local", "s3", "small", "upload"}
    if args.big:
        wanted.add("big")
    builders = {
        "http": lambda: scenarios.http_big(ctx),
        "local": lambda: scenarios.local_big(ctx),
        "s3": lambda: scenarios.s3_big(ctx),
        "small": lambda: scenarios.small_files(ctx, work),
        "upload": lambda: scenarios.upload_big(ctx),
        "big": lambda: scenarios.sparse_big(ctx),
    }
    return [build() for key, build in builders.items() if key in wanted]


def _no_server(scn: Scenario, reason: str) -> list[Row]:
    return [Row(scn, t, status=reason) for t in scn.tools]


def measure_all(args: argparse.Namespace, work: Path, env: dict[str, str], dataset: data.Dataset,
                mode: str, haul_bin: str) -> list[Row]:  # fmt: skip
    rows: list[Row] = []
    with contextlib.ExitStack() as stack:
        srv, reason = start_server(stack)
        url = srv.base_url if srv else "http://127.0.0.1:9"
        ctx = Context(dataset, url, url, BUCKET, mode, haul_bin)
        for scn in build_scenarios(ctx, work, args):
            print(scn.title, flush=True)
            if srv is None and scn.key not in {"local", "upload"}:
                rows += _no_server(scn, reason)
            else:
                rows += measure_scenario(scn, args, work, env, [srv.pid] if srv else [])
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    dataset = data.ensure(DATA_DIR)
    if args.big or "big" in args.only:
        data.ensure_sparse(DATA_DIR)
    compile_haul()
    mode, haul_bin = detect_haul(args.haul_mode)
    env = base_env()
    work = Path(tempfile.mkdtemp(prefix="haul-bench-", dir=args.work_dir))
    (work / "logs").mkdir()
    try:
        print("hashing ceiling", flush=True)
        ceiling = hashing_ceiling(args, work, env)
        startup_s = haul_startup_s(args, work, env)
        rows = measure_all(args, work, env, dataset, mode, haul_bin)
    finally:
        if args.keep:
            print(f"scratch kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    document_path = write_results(args, rows, ceiling, startup_s, mode, started)
    print(f"\nwritten to {document_path}")
    return 0


def _fs_note() -> str:
    if not FRESH_FS:
        return ""
    if all(FRESH_FS.values()):
        return "many-file runs each on a new ext4 · "
    return "many-file runs on the bench's own disk (no loop mount here) · "


def write_results(args: argparse.Namespace, rows: list[Row], ceiling: Ceiling,
                  startup_s: float | None, mode: str, started: float) -> Path:  # fmt: skip
    meta = [
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC · {platform.node()} · {os.cpu_count()} cores · "
        f"Python {platform.python_version()} · haul run as: {mode} · median of {args.runs} runs · "
        f"writes {'cold' if args.cold_writes else 'primed'} · {_fs_note()}"
        f"bench took {time.monotonic() - started:.0f} s",
        "",
        f"haul start-up (interpreter, imports, settings; included in every haul row): "
        f"{startup_s:.2f} s"
        if startup_s is not None
        else "haul start-up: not measured",
        "",
        "`haul ÷ tool` is the tool's median wall time over haul's (> 1: haul is faster); "
        "`of ceiling` is MiB/s over the hashing ceiling. CPU s is user+sys of the whole "
        "process tree (nginx excluded); peak RSS is the largest process of that tree "
        "(a child inherits the bench's own high-water mark at exec, so small tools show `<= N`); "
        "noise is the cores other work on this shared machine kept busy during the run "
        "(VM steal and kernel writeback included).",
    ]
    floor_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    doc = document(meta, rows, ceiling, floor_mib)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(doc)
    print("\n" + doc)
    return Path(args.out)
