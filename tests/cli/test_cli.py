"""The ``haul`` command line: help, hash, settings errors, submit (local validation and a real
worker end to end) and events."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis

from tests.support.httpserver import serve
from tests.support.servers import RedisServer
from tests.support.worker import start_worker, worker_env
from worker.cli import EXIT_FAILED, main
from worker.settings import load_settings
from worker.sizes import format_size

SEED_LINE = re.compile(
    r"^\d\d:\d\d:\d\d (?P<path>.+?): (downloaded, .+|md5 sum: [0-9a-f]{32}|"
    r"sha1 sum: [0-9a-f]{40}|sha256 sum: [0-9a-f]{64})$"
)
HAUL = Path(sys.executable).with_name("haul")


def haul_cmd(*args: str) -> list[str]:
    """The installed console script when there is one, else the module."""
    if HAUL.exists():
        return [str(HAUL), *args]
    return [sys.executable, "-m", "worker.cli", *args]


@pytest.fixture(autouse=True)
def _no_haul_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Each test sees only the HAUL_* variables it sets itself."""
    for key in list(os.environ):
        if key.startswith("HAUL_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("HAUL_DATA_DIR", str(tmp_path / "data"))


# ------------------------------------------------------------------------------------ help


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        ([], ["worker", "submit", "events", "hash", "fetch", "reindex", "config", "demo"]),
        (["worker"], ["celery", "queues", "SIGTERM"]),
        (["submit"], ["inputs", "outputs", "purge", "--wait"]),
        (["submit", "inputs"], ["Download", "--input", "--keep-directories", "--wait"]),
        (["submit", "outputs"], ["outputs/", "datum"]),
        (["submit", "purge"], ["--datum", "purged"]),
        (["events"], ["--follow", "--json", "CloudEvents"]),
        (["hash"], ["md5", "sha1", "sha256"]),
        (["fetch"], ["--to", "Download"]),
        (["reindex"], ["datum", "Redis"]),
        (["config"], ["settings", "Secrets"]),
        (["demo"], ["sample dataset", "worker"]),
    ],
)
def test_help_says_what_each_command_does(
    argv: list[str], words: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """`haul [COMMAND] --help` exits 0 and explains the command, with examples."""
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for word in words:
        assert word in out, f"{word!r} missing from `haul {' '.join(argv)} --help`"
    assert "example" in out


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """Plain `haul` shows the help instead of doing nothing silently."""
    assert main([]) == 2
    assert "submit" in capsys.readouterr().out


# ------------------------------------------------------------------------------------ hash


def test_hash_prints_the_seed_shape_matching_hashlib(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`haul hash` prints haul.log's four lines per file, with hashlib's digests."""
    files = {"small.bin": b"x" * 512, "train-labels.gz": os.urandom(28_881), "empty": b""}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    paths = [str(tmp_path / name) for name in files]

    assert main(["hash", *paths]) == 0
    lines = capsys.readouterr().out.splitlines()

    assert len(lines) == 4 * len(files)
    for line in lines:
        assert SEED_LINE.match(line), line
    for i, (name, data) in enumerate(files.items()):
        path = str(tmp_path / name)
        block = [line.split(" ", 1)[1] for line in lines[4 * i : 4 * i + 4]]
        assert block == [
            f"{path}: downloaded, {format_size(len(data))}",
            f"{path}: md5 sum: {hashlib.md5(data).hexdigest()}",
            f"{path}: sha1 sum: {hashlib.sha1(data).hexdigest()}",
            f"{path}: sha256 sum: {hashlib.sha256(data).hexdigest()}",
        ]
    assert "downloaded, 512 B" in lines[0]
    assert "downloaded, 28.9 kB" in lines[4]


def test_hash_missing_file_exits_1_with_a_clear_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing file is named on stderr; the others are still hashed; exit 1."""
    (tmp_path / "here").write_bytes(b"hello")
    missing = tmp_path / "not-here.gz"
    assert main(["hash", str(missing), str(tmp_path / "here")]) == 1
    captured = capsys.readouterr()
    assert f"{missing}: no such file" in captured.err
    assert len(captured.out.splitlines()) == 4


# ------------------------------------------------------------------------------------ config


def test_bad_config_file_names_the_key_and_exits_2(tmp_path: Path) -> None:
    """A bad value in HAUL_CONFIG fails at start: one line naming the key, exit 2."""
    config = tmp_path / "haul.toml"
    config.write_text('events_maxlen = 0\n[stores.lake]\ntype = "s3"\nbucket = "x"\n')
    env = {**os.environ, "HAUL_CONFIG": str(config)}
    proc = subprocess.run(haul_cmd("config"), env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "events_maxlen" in proc.stderr
    assert "stores.lake.bucket" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr


def test_config_flag_and_json_output_hide_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`haul --config FILE config --json` shows the stores, not the credentials."""
    config = tmp_path / "haul.toml"
    config.write_text(
        '[stores.blobs]\ntype = "azure"\ncontainer = "models"\n'
        'connection_string_env = "MY_AZ_CONN"\n[projects.p1]\nstore = "blobs"\n'
    )
    monkeypatch.setenv("HAUL_CONFIG", "unused")  # restored after the test; --config wins
    monkeypatch.setenv("MY_AZ_CONN", "AccountName=a;AccountKey=s3cr3t-value")
    assert main(["--config", str(config), "config", "--json"]) == 0
    out = capsys.readouterr().out
    view = json.loads(out)
    assert view["stores"]["blobs"]["container"] == "models"
    assert view["stores"]["default"]["type"] == "local"
    assert view["projects"] == {"p1": {"store": "blobs"}}
    assert "s3cr3t" not in out


def test_config_prints_a_valid_settings_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`haul config` prints TOML that reads back as the same settings (unset keys are
    comments: TOML has no null), without the credentials."""
    config = tmp_path / "haul.toml"
    config.write_text(
        'events_maxlen = 5000\n[stores.blobs]\ntype = "azure"\ncontainer = "models"\n'
        'connection_string_env = "MY_AZ_CONN"\n[projects.p1]\nstore = "blobs"\n'
    )
    monkeypatch.setenv("HAUL_CONFIG", "unused")  # --config wins
    monkeypatch.setenv("MY_AZ_CONN", "AccountName=a;AccountKey=s3cr3t-value")
    assert main(["--config", str(config), "config"]) == 0
    out = capsys.readouterr().out
    assert "s3cr3t" not in out
    assert "# broker_url is not set" in out
    printed = tmp_path / "printed.toml"
    printed.write_text(out)
    again = load_settings({"HAUL_CONFIG": str(printed)})
    assert again.events_maxlen == 5000
    assert (
        again.stores["blobs"].model_dump()
        == load_settings({"HAUL_CONFIG": str(config)}).stores["blobs"].model_dump()
    )


# ------------------------------------------------------------------------------------ submit


@pytest.fixture(scope="module")
def redis_db(redis_srv: RedisServer) -> Iterator[str]:
    """A Redis database of the shared test server that no other module uses."""
    for db in range(15, 0, -1):
        client: Redis[bytes] = Redis.from_url(redis_srv.url_for_db(db))
        if client.set("haul-test:claimed", "tests/cli", nx=True):
            url = redis_srv.url_for_db(db)
            try:
                yield url
            finally:
                client.flushdb()
                client.close()
            return
        client.close()
    pytest.fail("no free Redis database on the test server")


def _queued(redis_url: str) -> int:
    client: Redis[bytes] = Redis.from_url(redis_url)
    try:
        return sum(int(client.llen(q)) for q in ("haul.inputs", "haul.outputs", "haul.control"))
    finally:
        client.close()


def test_submit_invalid_message_exits_2_with_field_problems_and_sends_nothing(
    redis_db: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Local validation uses the worker's models: every problem named, nothing enqueued."""
    monkeypatch.setenv("HAUL_REDIS_URL", redis_db)
    before = _queued(redis_db)
    code = main(
        [
            "submit", "inputs", "--execution", "../escape", "--project", "p1",
            "--input", "data=ftp://example.com/x", "--filename", "a/b",
        ]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert "nothing was sent" in err
    assert "execution_id: does not match" in err
    assert "inputs.0.urls: " in err and "unsupported URL form" in err
    assert "inputs.0.filename: " in err
    assert _queued(redis_db) == before


def test_submit_file_that_is_not_a_message_exits_2(
    tmp_path: Path,
    redis_db: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--file: a JSON list or a missing field is reported, nothing enqueued."""
    monkeypatch.setenv("HAUL_REDIS_URL", redis_db)
    before = _queued(redis_db)
    bad = tmp_path / "m.json"
    bad.write_text(json.dumps({"project_id": "p1"}))
    assert main(["submit", "outputs", "--file", str(bad)]) == 2
    assert "execution_id: Field required" in capsys.readouterr().err
    bad.write_text("[1, 2]")
    assert main(["submit", "purge", "--file", str(bad)]) == 2
    assert "expected a JSON object" in capsys.readouterr().err
    assert _queued(redis_db) == before


@pytest.fixture(scope="module")
def worker_setup(
    redis_db: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path]]:
    """A real worker on the module's Redis database, allowed to read the loopback server."""
    data_dir = tmp_path_factory.mktemp("cli-worker") / "data"
    with start_worker(
        redis_db, data_dir, extra_env={"HAUL_ALLOW_PRIVATE_ADDRESSES": "true"}
    ) as worker:
        yield redis_db, data_dir
        assert worker.proc.poll() is None, worker.log_tail()


def _run_haul(redis_url: str, data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = worker_env(redis_url, data_dir)
    return subprocess.run(haul_cmd(*args), env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.integration
def test_submit_wait_follows_the_events_to_ready(
    worker_setup: tuple[str, Path], tmp_path: Path
) -> None:
    """`haul submit inputs --wait` against a real worker prints the events and exits 0."""
    redis_url, data_dir = worker_setup
    data = os.urandom(28_881)
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "train-labels.gz").write_bytes(data)
    execution = f"exec-{uuid.uuid4().hex[:8]}"
    with serve(tmp_path / "www") as srv:
        proc = _run_haul(
            redis_url, data_dir,
            "submit", "inputs", "--execution", execution, "--project", "proj-42",
            "--input", f"dataset={srv.url('/train-labels.gz')}", "--wait", "--timeout", "60",
        )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert re.fullmatch(r"[0-9a-f-]{36}", lines[0]), lines[0]  # the task id
    sha = hashlib.sha256(data).hexdigest()
    assert any(
        re.fullmatch(
            rf"\d\d:\d\d:\d\d input\.downloaded {execution}: "
            rf"/valohai/inputs/dataset/train-labels\.gz 28\.9 kB sha256 {sha}",
            line,
        )
        for line in lines
    ), proc.stdout
    assert re.fullmatch(
        rf"\d\d:\d\d:\d\d inputs\.ready {execution}: 1 file\(s\), 28\.9 kB in .* s", lines[-1]
    ), proc.stdout
    landed = data_dir / "executions" / execution / "inputs" / "dataset" / "train-labels.gz"
    assert landed.read_bytes() == data


@pytest.mark.integration
def test_submit_wait_exits_1_when_an_input_fails(
    worker_setup: tuple[str, Path], tmp_path: Path
) -> None:
    """A 404 input: the inputs.failed line with its error code, exit 1."""
    redis_url, data_dir = worker_setup
    (tmp_path / "www").mkdir()
    execution = f"exec-{uuid.uuid4().hex[:8]}"
    with serve(tmp_path / "www") as srv:
        proc = _run_haul(
            redis_url, data_dir,
            "submit", "inputs", "--execution", execution, "--project", "proj-42",
            "--input", f"dataset={srv.url('/missing.gz')}", "--wait", "--timeout", "60",
        )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    failed = [line for line in proc.stdout.splitlines() if " inputs.failed " in line]
    assert len(failed) == 1, proc.stdout
    assert f"inputs.failed {execution}: input dataset (" in failed[0]
    assert "missing.gz" in failed[0] and "not_found" in failed[0]


@pytest.mark.integration
def test_submit_wait_times_out_with_exit_3(redis_db: str, tmp_path: Path) -> None:
    """No worker on the queue: --wait gives up after --timeout with exit 3."""
    proc = _run_haul(
        redis_db, tmp_path / "data",
        "submit", "outputs", "--execution", "e1", "--project", "p1",
        "--queue", f"haul.nobody-{uuid.uuid4().hex[:6]}", "--wait", "--timeout", "1",
    )  # fmt: skip
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "gave up waiting after 1 s" in proc.stderr


@pytest.mark.integration
def test_events_json_prints_valid_cloudevents(
    worker_setup: tuple[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`haul events --json --count N` prints N CloudEvents 1.0 objects, oldest first."""
    redis_url, data_dir = worker_setup
    (tmp_path / "www").mkdir()
    for name in ("a.bin", "b.bin"):
        (tmp_path / "www" / name).write_bytes(os.urandom(1000))
    execution = f"exec-{uuid.uuid4().hex[:8]}"
    with serve(tmp_path / "www") as srv:
        proc = _run_haul(
            redis_url, data_dir,
            "submit", "inputs", "--execution", execution, "--project", "proj-42",
            "--input", f"d={srv.url('/a.bin')},{srv.url('/b.bin')}", "--wait",
        )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr

    monkeypatch.setenv("HAUL_REDIS_URL", redis_url)
    assert main(["events", "--json", "--count", "3", "--execution", execution]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    events = [json.loads(line) for line in lines]
    for event in events:
        assert event["specversion"] == "1.0"
        assert event["datacontenttype"] == "application/json"
        assert event["subject"] == execution
        assert {"id", "source", "type", "time", "data"} <= set(event)
        assert event["type"].startswith("haul.")
    assert [e["type"] for e in events] == [
        "haul.input.downloaded",
        "haul.input.downloaded",
        "haul.inputs.ready",
    ]

    assert main(["events", "--type", "inputs.ready", "--count", "1"]) == 0
    readable = capsys.readouterr().out.splitlines()
    assert len(readable) == 1
    assert re.fullmatch(
        rf"\d\d:\d\d:\d\d inputs\.ready {execution}: 2 file\(s\), 2\.0 kB in .* s", readable[0]
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["events"],
        ["submit", "inputs", "--execution", "e1", "--project", "p", "--input", "x=https://h/a"],
    ],
)
def test_a_dead_redis_is_one_clear_line(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HAUL_REDIS_URL", f"redis://:secret-pw@127.0.0.1:{port}/0")
    assert main(argv) == EXIT_FAILED
    err = capsys.readouterr().err
    assert f"cannot use Redis at redis://127.0.0.1:{port}/0" in err
    assert "Traceback" not in err and "secret-pw" not in err


def test_the_entry_point_reads_the_environment_once_and_leaves_it_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--config FILE` goes into the environment handed to the subcommand (and the processes
    it starts), not into this process's own environment."""
    config = tmp_path / "haul.toml"
    config.write_text("events_maxlen = 4321\n")
    monkeypatch.delenv("HAUL_CONFIG", raising=False)
    assert main(["--config", str(config), "config"]) == 0
    assert "events_maxlen = 4321" in capsys.readouterr().out
    assert "HAUL_CONFIG" not in os.environ
