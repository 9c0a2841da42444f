"""JSON Schemas of the messages and of every event's data, generated from the models.

``python -m worker.schemas`` writes them to ``schemas/``; ``--check`` exits 1 when the files
in the repository differ from what the models generate (the test suite runs the check).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from worker.models import EVENT_DATA, MESSAGES

DEFAULT_DIR = Path(__file__).resolve().parent.parent / "schemas"


def generate() -> dict[str, dict[str, Any]]:
    """File name -> schema, for every message and event type."""
    out: dict[str, dict[str, Any]] = {}
    for task, model in MESSAGES.items():
        schema = model.model_json_schema()
        schema["$id"] = f"urn:haul:message:{task}"
        schema["title"] = f"{task} message"
        out[f"message.{task}.json"] = schema
    for event_type, data_model in EVENT_DATA.items():
        schema = data_model.model_json_schema()
        schema["$id"] = f"urn:haul:event:{event_type}"
        schema["title"] = f"{event_type} event data"
        out[f"event.{event_type}.json"] = schema
    return out


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def stale(directory: Path = DEFAULT_DIR) -> list[str]:
    """Names of schema files that are missing, different, or no longer generated."""
    wanted = {name: render(s) for name, s in generate().items()}
    problems = [
        name
        for name, text in wanted.items()
        if not (directory / name).is_file() or (directory / name).read_text() != text
    ]
    if directory.is_dir():
        problems += [p.name for p in directory.glob("*.json") if p.name not in wanted]
    return sorted(problems)


def write(directory: Path = DEFAULT_DIR) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    wanted = generate()
    for old in directory.glob("*.json"):
        if old.name not in wanted:
            old.unlink()
    for name, schema in wanted.items():
        (directory / name).write_text(render(schema))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if schemas/ is stale")
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    args = parser.parse_args(argv)
    if args.check:
        problems = stale(args.dir)
        if problems:
            print("stale schemas (run python -m worker.schemas):", *problems, file=sys.stderr)
            return 1
        return 0
    write(args.dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
