"""Coverage-guided fuzzing (atheris) of what a hostile sender controls first.

::

    .venv/bin/python -m bench.fuzz messages -runs=20000      # the message decoder
    .venv/bin/python -m bench.fuzz urls -runs=20000          # the URL parser and redaction

Targets:

* ``messages``: raw bytes as the worker receives a message body: kombu's JSON decoding,
  Celery's ``(args, kwargs, embed)`` body, the one-object rule (``message_from``) and the
  contract's validation, for each task. Allowed outcomes: a message, or a rejection
  (kombu's DecodeError for bytes that are not JSON, MessageError for the rest).
* ``urls``: any text as an input URL: ``parse_input_url`` (UnsupportedURL is the rejection),
  ``redact_url`` and ``redact_text`` (which never raise), and the message model's URL check.

Anything else that escapes is a crash: atheris prints the input and the traceback and exits
non-zero. Every argument after the target goes to libFuzzer (``-runs=N``, ``-seed=S``,
``-max_total_time=S``); a run is seeded with a few well-formed inputs, so it starts from
the shapes orchestrators send. ``tests/property/test_fuzz.py`` runs both targets for a fixed
number of runs.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import atheris

with atheris.instrument_imports(include=["worker", "tasks"]):
    from kombu.exceptions import DecodeError
    from kombu.serialization import loads

    from tasks.runner import message_from
    from worker.errors import MessageError, UnsupportedURL
    from worker.logs import redact_text
    from worker.models import MESSAGES, InputSpec, validate_message
    from worker.urls import parse_input_url, redact_url

TASKS = sorted(MESSAGES)
SEEDS: dict[str, list[bytes]] = {
    "messages": [
        json.dumps(
            [
                [
                    {
                        "execution_id": "exec-1",
                        "project_id": "proj-42",
                        "inputs": [
                            {
                                "name": "dataset",
                                "urls": ["s3://b/k/*.gz", "https://h/x?sig=s"],
                                "keep_directories": "suffix",
                            }
                        ],
                    }
                ],
                {},
                {"callbacks": None},
            ]
        ).encode(),
        json.dumps([[], {"project_id": "p", "datum_ids": ["a"]}, {}]).encode(),
        json.dumps([[{"execution_id": "e", "project_id": "p", "store": "s"}], {}, {}]).encode(),
    ],
    "urls": [
        b"s3://bucket/a/**/b*.txt",
        b"azure://acct/cont/blob",
        b"swift://proj/cont/obj",
        b"gs://b/k",
        b"https://u:p@[::ffff:127.0.0.1]:8443/a%2e%2e/x?X-Amz-Signature=s#f",
        b"datum://0123456789abcdef0123456789abcdef",
        b"file:///srv/store/x",
    ],
}


def _body(value: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Celery protocol 2: the body is ``[args, kwargs, embed]``; anything else gets no args."""
    if isinstance(value, list) and len(value) == 3:
        args, kwargs, _embed = value
        if isinstance(args, list) and isinstance(kwargs, dict):
            return tuple(args), kwargs
    return (value,), {}


def fuzz_message(data: bytes) -> None:
    if not data:
        return
    task = TASKS[data[0] % len(TASKS)]
    try:
        decoded = loads(data[1:], "application/json", "utf-8", accept={"application/json"})
    except DecodeError:
        return  # the worker rejects the body undecoded (haul.message.rejected)
    args, kwargs = _body(decoded)
    try:
        validate_message(MESSAGES[task], message_from(args, kwargs))
    except MessageError:
        return


def fuzz_url(data: bytes) -> None:
    text = data.decode("utf-8", errors="surrogateescape")
    with contextlib.suppress(UnsupportedURL):
        parse_input_url(text)
    redact_url(text)
    redact_text(text)
    # pydantic's ValidationError (a ValueError) is the message's rejection.
    with contextlib.suppress(ValueError):
        InputSpec(name="x", urls=[text])


TARGETS = {"messages": fuzz_message, "urls": fuzz_url}


def main(argv: list[str]) -> int:
    """Seed a temporary corpus, fuzz in a child process, remove the corpus: libFuzzer ends its
    process from C when the runs are done, so the child cannot clean up after itself."""
    if len(argv) < 2 or argv[1] not in TARGETS:
        sys.exit(f"usage: python -m bench.fuzz {{{'|'.join(TARGETS)}}} [libFuzzer options]")
    target, options = argv[1], argv[2:]
    if options[:1] == ["--child"]:
        atheris.Setup([argv[0], *options[1:]], TARGETS[target])
        atheris.Fuzz()
        return 0
    with tempfile.TemporaryDirectory(prefix="haul-fuzz-") as corpus:
        for n, seed in enumerate(SEEDS[target]):
            unit = bytes([n]) + seed if target == "messages" else seed
            Path(corpus, f"seed-{n}").write_bytes(unit)
        child = [sys.executable, "-m", "bench.fuzz", target, "--child", *options, corpus]
        return subprocess.run(child, check=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv))
