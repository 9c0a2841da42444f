"""What is measured: each scenario is one input moved by haul and by the tools it is compared to.

Every tool writes into ``<run dir>/out``; a run counts only when ``out`` then holds the expected
number of files of the expected size (and, for the 1 GiB file, when its stdout names the right
sha256). Shell baselines are one ``bash -c`` script, so their whole pipeline is measured.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.data import BIG_BYTES, BIG_NAME, SMALL_BYTES, SMALL_COUNT, SPARSE_BYTES, Dataset

HERE = Path(__file__).resolve().parent
DRIVERS = HERE / "drivers"
SUMS = "md5sum {f} && sha1sum {f} && sha256sum {f}"
SMALL_PARALLEL = 16

Env = Callable[[Path], dict[str, str]]


def _no_env(run: Path) -> dict[str, str]:
    return {}


@dataclass(frozen=True)
class Tool:
    key: str
    label: str
    #: the command, given the run dir (outputs go to ``run / "out"``)
    argv: Callable[[Path], list[str]]
    env: Env = _no_env
    #: executables (or ``py:module``) that must exist, else the row says "not installed"
    needs: tuple[str, ...] = ()
    haul: bool = False
    #: run the command once, untimed, before each measured run (the cache-hit row)
    warmup: bool = False
    #: False for tools that compute no digest (their stdout is not checked for the sha256)
    hashes: bool = True
    note: str = ""


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    file_count: int
    file_bytes: int
    tools: list[Tool] = field(default_factory=list)
    #: the sha256 the tool's stdout must contain (single-file scenarios)
    sha256: str | None = None

    @property
    def total_bytes(self) -> int:
        return self.file_count * self.file_bytes


@dataclass(frozen=True)
class Context:
    data: Dataset
    http_url: str
    endpoint_url: str
    bucket: str
    haul_mode: str  # "cli" | "run_fetch" | "engine"
    haul_bin: str


def bash(script: str) -> list[str]:
    return ["bash", "-c", "set -euo pipefail\n" + script]


def haul_env(extra: dict[str, str] | None = None, *, cache: bool = False) -> Env:
    def env(run: Path) -> dict[str, str]:
        return {
            "HAUL_DATA_DIR": str(run / "haul-data"),
            "HAUL_CACHE_ENABLED": "true" if cache else "false",
            "HAUL_ALLOW_PRIVATE_ADDRESSES": "true",
            "HAUL_LOG_LEVEL": "WARNING",
            **(extra or {}),
        }

    return env


def haul_fetch(
    ctx: Context, urls: list[str], *, url_list: Path | None = None
) -> Callable[[Path], list[str]]:
    def argv(run: Path) -> list[str]:
        out = str(run / "out")
        if ctx.haul_mode == "cli" and url_list is None:
            return [ctx.haul_bin, "fetch", *urls, "--to", out]
        cmd = [sys.executable, str(DRIVERS / "haul_fetch.py"), "--to", out]
        cmd += ["--timing", str(run / "timing")]
        return cmd + (["--list", str(url_list)] if url_list else urls)

    return argv


def _haul_label(ctx: Context) -> str:
    return {"cli": "haul fetch", "run_fetch": "haul run_fetch()", "engine": "haul engine"}[
        ctx.haul_mode
    ]


def http_big(ctx: Context) -> Scenario:
    url = f"{ctx.http_url}/{BIG_NAME}"
    q_url = shlex.quote(url)

    def out_file(run: Path) -> str:
        return shlex.quote(str(run / "out" / BIG_NAME))

    def sums(run: Path) -> str:
        return SUMS.format(f=out_file(run))

    def tee(run: Path) -> list[str]:
        fifo = [shlex.quote(str(run / f"p{i}")) for i in range(3)]
        return bash(
            f"mkfifo {' '.join(fifo)}\n"
            f"openssl dgst -md5 < {fifo[0]} & openssl dgst -sha1 < {fifo[1]} &"
            f" openssl dgst -sha256 < {fifo[2]} &\n"
            f"curl -sSf {q_url} | tee {' '.join(fifo)} > {out_file(run)}\nwait"
        )

    rclone_env: Env = lambda run: {"RCLONE_CONFIG": str(run / "rclone.conf")}  # noqa: E731
    tools = [
        Tool("haul", _haul_label(ctx), haul_fetch(ctx, [url]), haul_env(), haul=True),
        Tool(
            "curl+sums",
            "curl, then md5sum, sha1sum, sha256sum",
            lambda run: bash(f"curl -sSf -o {out_file(run)} {q_url}\n{sums(run)}"),
            needs=("curl", "md5sum", "sha1sum", "sha256sum"),
        ),
        Tool(
            "aria2c+sums",
            "aria2c -x8 -s8, then the three sums",
            lambda run: bash(
                f"aria2c -q -x8 -s8 --allow-overwrite=true -d {shlex.quote(str(run / 'out'))}"
                f" -o {BIG_NAME} {q_url}\n{sums(run)}"
            ),
            needs=("aria2c", "md5sum", "sha1sum", "sha256sum"),
        ),
        Tool(
            "tee",
            "curl | tee into 3 openssl dgst",
            tee,
            needs=("curl", "openssl", "mkfifo"),
            note="fifos + wait, so the hashers are timed",
        ),
        Tool(
            "rclone+sums",
            "rclone copyurl, then the three sums",
            lambda run: bash(f"rclone copyurl {q_url} {out_file(run)}\n{sums(run)}"),
            env=rclone_env,
            needs=("rclone", "md5sum", "sha1sum", "sha256sum"),
        ),
    ]
    if ctx.haul_mode != "engine":
        tools.append(
            Tool(
                "haul-cache",
                f"{_haul_label(ctx)}, cache hit",
                haul_fetch(ctx, [url]),
                haul_env(cache=True),
                haul=True,
                warmup=True,
                note="second fetch of the same URL, cache on",
            )
        )
    return Scenario(
        "http", "1 GiB over HTTP (nginx)", 1, BIG_BYTES, tools, sha256=ctx.data.big_sha256
    )


def local_big(ctx: Context) -> Scenario:
    src = ctx.data.big
    store = {"HAUL_STORES__BENCH__TYPE": "local", "HAUL_STORES__BENCH__PATH": str(src.parent)}
    tools = [
        Tool("haul", _haul_label(ctx), haul_fetch(ctx, [src.as_uri()]), haul_env(store), haul=True),
        Tool(
            "cp+sums",
            "cp, then the three sums",
            lambda run: bash(
                f"cp {shlex.quote(str(src))} {shlex.quote(str(run / 'out'))}/\n"
                + SUMS.format(f=shlex.quote(str(run / "out" / BIG_NAME)))
            ),
            needs=("cp", "md5sum", "sha1sum", "sha256sum"),
        ),
    ]
    return Scenario(
        "local", "1 GiB from the local store (file://)", 1, BIG_BYTES, tools, ctx.data.big_sha256
    )


def s3_big(ctx: Context) -> Scenario:
    store = {
        "HAUL_STORES__BENCH__TYPE": "s3",
        "HAUL_STORES__BENCH__BUCKET": ctx.bucket,
        "HAUL_STORES__BENCH__ENDPOINT_URL": ctx.endpoint_url,
        "HAUL_STORES__BENCH__REGION": "us-east-1",
    }
    url = f"s3://{ctx.bucket}/{BIG_NAME}"
    tools = [
        Tool("haul", _haul_label(ctx), haul_fetch(ctx, [url]), haul_env(store), haul=True),
        Tool(
            "boto3",
            "boto3 download_file (no hashing)",
            lambda run: [
                sys.executable,
                str(DRIVERS / "boto3_get.py"),
                ctx.endpoint_url,
                ctx.bucket,
                BIG_NAME,
                str(run / "out" / BIG_NAME),
            ],
            needs=("py:boto3",),
            hashes=False,
        ),
    ]
    return Scenario(
        "s3", "1 GiB from S3 (nginx posing as S3)", 1, BIG_BYTES, tools, ctx.data.big_sha256
    )


def small_files(ctx: Context, work: Path) -> Scenario:
    names = ctx.data.small_names
    urls = [f"{ctx.http_url}/small/{n}" for n in names]
    url_list = work / "small-urls.txt"
    url_list.write_text("\n".join(urls) + "\n")
    curl_cfg = work / "small-curl.cfg"

    def curl(run: Path) -> list[str]:
        out = run / "out"
        curl_cfg.write_text(
            "".join(
                f'url = "{u}"\noutput = "{out / n}"\n' for u, n in zip(urls, names, strict=True)
            )
        )
        return [
            "curl", "-sS", "-Z", "--parallel-max", str(SMALL_PARALLEL), "-K", str(curl_cfg),
        ]  # fmt: skip

    many = len(" ".join(urls)) < 100_000 and ctx.haul_mode == "cli"
    tools = [
        Tool(
            "haul",
            _haul_label(ctx),
            haul_fetch(ctx, urls) if many else haul_fetch(ctx, [], url_list=url_list),
            haul_env(),
            haul=True,
        ),
        Tool(
            "curl-Z",
            f"curl -Z --parallel-max {SMALL_PARALLEL}",
            curl,
            needs=("curl",),
            note="no hashing",
        ),
        Tool(
            "aria2c-j16",
            f"aria2c -j{SMALL_PARALLEL} -i list",
            lambda run: [
                "aria2c",
                "-q",
                f"-j{SMALL_PARALLEL}",
                "--allow-overwrite=true",
                "-d",
                str(run / "out"),
                "-i",
                str(url_list),
            ],
            needs=("aria2c",),
            note="no hashing",
        ),
        Tool(
            "rclone",
            f"rclone copy :http: --transfers {SMALL_PARALLEL}",
            lambda run: [
                "rclone",
                "copy",
                "--http-url",
                f"{ctx.http_url}/small/",
                ":http:",
                str(run / "out"),
                "--transfers",
                str(SMALL_PARALLEL),
                "--checkers",
                str(SMALL_PARALLEL),
            ],
            env=lambda run: {"RCLONE_CONFIG": str(run / "rclone.conf")},
            needs=("rclone",),
            note="no hashing; lists the HTML index",
        ),
    ]
    return Scenario("small", f"{SMALL_COUNT} files of 10 KiB over HTTP", SMALL_COUNT,
                    SMALL_BYTES, tools)  # fmt: skip


def upload_big(ctx: Context) -> Scenario:
    src = ctx.data.big
    tools = [
        Tool(
            "haul",
            "haul upload() into a local store",
            lambda run: [
                sys.executable,
                str(DRIVERS / "haul_upload.py"),
                str(src),
                str(run / "out"),
                "--timing",
                str(run / "timing"),
            ],
            haul_env(),
            haul=True,
            note="hash, then copy + fsync",
        ),
        Tool(
            "cp+sums",
            "cp, then the three sums",
            lambda run: bash(
                f"cp {shlex.quote(str(src))} {shlex.quote(str(run / 'out'))}/\n"
                + SUMS.format(f=shlex.quote(str(src)))
            ),
            needs=("cp", "md5sum", "sha1sum", "sha256sum"),
            note="no fsync",
        ),
    ]
    return Scenario(
        "upload", "1 GiB output into the local store", 1, BIG_BYTES, tools, ctx.data.big_sha256
    )


def sparse_big(ctx: Context) -> Scenario:
    url = f"{ctx.http_url}/{ctx.data.sparse.name}"
    tools = [Tool("haul", _haul_label(ctx), haul_fetch(ctx, [url]), haul_env(), haul=True)]
    return Scenario("big", "10 GiB sparse file over HTTP (--big)", 1, SPARSE_BYTES, tools)
