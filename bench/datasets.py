"""``.venv/bin/python -m bench.datasets [--files N] [--plan-files N] [--only local,s3]``.

Dataset versions as inputs (issue 8), measured in process (the pipeline's ``prepare_inputs``
with a real Redis, no Celery), on a private redis-server and moto_server on 127.0.0.1:

* ``dataset://bench/v1`` of ``--files`` files of 10 KiB (default 10 000), from the local store
  and from moto, against the very same objects named one by one in the message (``file://``
  or ``s3://`` URLs, one input): files/s of each, median of ``--runs``.
* planning a version of ``--plan-files`` members (default 100 000): the seconds
  ``plan_input`` takes, and (in a second, traced run) the peak of what it allocates, the
  list of planned files it returns included.

Setup is not measured: objects go into the store with the SDK/filesystem, datum records into
Redis in pipelines, and the version is sealed with ``DatasetIndex`` (as ``store_outputs``
seals it). It is a measurement, not a test: nothing fails.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from redis import Redis

from tests.support.servers import moto_server, redis_server
from worker.constants import KEY_DATUM
from worker.models import Datum, InputSpec, PrepareInputs
from worker.pipeline.plan import plan_input
from worker.pipeline.prepare import prepare_inputs
from worker.pipeline.runtime import Runtime
from worker.records.datasets import DatasetIndex, Member, VersionEntry, VersionRef
from worker.settings import load_settings

PROJECT = "bench"
SIZE = 10 * 1024
BUCKET = "bench-datasets"


def _datum(n: int, store: str, key: str, uri: str) -> Datum:
    return Datum(
        datum_id=f"{n:032x}",
        project_id=PROJECT,
        execution_id="bench-producer",
        path=f"part-{n % 10:02d}/file-{n:06d}.bin",
        uri=uri,
        key=key,
        store=store,
        size=SIZE,
        md5="0" * 32,
        sha1="0" * 40,
        sha256="0" * 64,
        created_at="2026-12-03T07:00:00.000Z",
    )


def _seal(runtime: Runtime, store_name: str, ref: VersionRef, datums: list[Datum]) -> None:
    client = runtime.redis
    pipe = client.pipeline(transaction=False)
    for i, d in enumerate(datums):
        pipe.set(f"{KEY_DATUM}:{d.datum_id}", json.dumps(d.model_dump(mode="json")))
        if i % 2000 == 1999:
            pipe.execute()
    pipe.execute()
    index = DatasetIndex(client)
    members = [Member(d.path, d.datum_id) for d in datums]
    index.join_many(PROJECT, "bench-producer", VersionEntry(ref), members)
    index.seal(runtime.sources.store(store_name), PROJECT, "bench-producer", ref)


def _prepare(runtime: Runtime, urls: list[str], keep: str) -> float:
    eid = f"bench-{os.urandom(4).hex()}"
    msg = PrepareInputs(
        execution_id=eid,
        project_id=PROJECT,
        inputs=[InputSpec(name="d", urls=urls, keep_directories=keep)],  # type: ignore[arg-type]
    )
    started = time.perf_counter()
    summary = prepare_inputs(runtime, msg).summary
    seconds = time.perf_counter() - started
    assert summary["files"] == len(urls) or urls[0].startswith("dataset://"), summary
    shutil.rmtree(runtime.execution_dir(eid))
    return seconds


@contextlib.contextmanager
def _servers(work: Path, with_s3: bool) -> Iterator[tuple[str, Any]]:
    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(redis_server(work / "redis"))
        moto = stack.enter_context(moto_server(work / "moto")) if with_s3 else None
        yield redis.url, moto


def _runtime(work: Path, redis_url: str, moto: Any) -> Runtime:
    env = {
        "HAUL_REDIS_URL": redis_url,
        "HAUL_DATA_DIR": str(work / "data"),
        "HAUL_CACHE_ENABLED": "false",
        "HAUL_LOG_LEVEL": "WARNING",
        "HAUL_STORES__LOCAL__TYPE": "local",
        "HAUL_STORES__LOCAL__PATH": str(work / "store"),
    }
    if moto is not None:
        env |= {
            "HAUL_STORES__MOTO__TYPE": "s3",
            "HAUL_STORES__MOTO__BUCKET": BUCKET,
            "HAUL_STORES__MOTO__ENDPOINT_URL": moto.endpoint_url,
            "HAUL_STORES__MOTO__REGION": moto.region,
            "AWS_ACCESS_KEY_ID": moto.access_key_id,
            "AWS_SECRET_ACCESS_KEY": moto.secret_access_key,
        }
        os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})
    return Runtime.from_settings(load_settings(environ=env))


def _put_objects(kind: str, work: Path, moto: Any, keys: list[str]) -> None:
    body = os.urandom(SIZE)
    if kind == "local":
        for key in keys:
            path = work / "store" / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(body)
        return
    from concurrent.futures import ThreadPoolExecutor

    client = moto.client()
    client.create_bucket(Bucket=BUCKET)
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: client.put_object(Bucket=BUCKET, Key=k, Body=body), keys))


def measure_inputs(
    kind: str, work: Path, runtime: Runtime, moto: Any, files: int, runs: int
) -> dict[str, Any]:
    store = "local" if kind == "local" else "moto"
    keys = [f"objects/{kind}/file-{n:06d}.bin" for n in range(files)]
    _put_objects(kind, work, moto, keys)
    uri_of = (
        (lambda k: (work / "store" / k).as_uri())
        if kind == "local"
        else (lambda k: f"s3://{BUCKET}/{k}")
    )
    datums = [
        _datum(n + (0 if kind == "local" else 10**7), store, k, uri_of(k))
        for n, k in enumerate(keys)
    ]
    ref = VersionRef("bench", f"v-{kind}")
    _seal(runtime, store, ref, datums)
    version_s = [_prepare(runtime, [ref.uri], "full") for _ in range(runs)]
    one_by_one_s = [_prepare(runtime, [uri_of(k) for k in keys], "none") for _ in range(runs)]
    v, o = statistics.median(version_s), statistics.median(one_by_one_s)
    return {
        "store": kind,
        "files": files,
        "dataset_files_per_s": round(files / v),
        "named_files_per_s": round(files / o),
        "dataset_s": round(v, 2),
        "named_s": round(o, 2),
    }


def measure_planning(runtime: Runtime, files: int) -> dict[str, Any]:
    ref = VersionRef("bench", "plan")
    datums = [_datum(n + 2 * 10**7, "local", f"data/x/{n}", f"file:///x/{n}") for n in range(files)]
    started = time.perf_counter()
    _seal(runtime, "local", ref, datums)
    setup_s = time.perf_counter() - started
    del datums
    spec = InputSpec(name="d", urls=[ref.uri])
    started = time.perf_counter()
    planned, _skipped = plan_input(runtime, spec, PROJECT)
    seconds = time.perf_counter() - started
    assert len(planned) == files
    del planned
    # A second, traced run: the peak of what planning allocates (the planned list included).
    tracemalloc.start()
    _again, _skipped = plan_input(runtime, spec, PROJECT)
    _now, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "members": files,
        "plan_s": round(seconds, 2),
        "members_per_s": round(files / seconds),
        "traced_peak_mib": round(peak / 2**20, 1),
        "setup_and_seal_s": round(setup_s, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.datasets", description=__doc__)
    p.add_argument("--files", type=int, default=10_000)
    p.add_argument("--plan-files", type=int, default=100_000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--only", default="local,s3,plan")
    args = p.parse_args(argv)
    only = set(args.only.split(","))
    with tempfile.TemporaryDirectory(prefix="haul-bench-ds-") as tmp:
        work = Path(tmp)
        with _servers(work, "s3" in only) as (redis_url, moto):
            runtime = _runtime(work, redis_url, moto)
            Redis.from_url(redis_url).flushdb()
            rows: list[dict[str, Any]] = []
            for kind in ("local", "s3"):
                if kind in only:
                    rows.append(measure_inputs(kind, work, runtime, moto, args.files, args.runs))
                    print(json.dumps(rows[-1]), flush=True)
            if "plan" in only:
                print(json.dumps(measure_planning(runtime, args.plan_files)), flush=True)
            runtime.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
