"""What every subcommand module shares: exit codes, the error line, the help formatter."""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from worker.settings import Settings

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3

#: what ``set_defaults(func=...)`` holds: run the subcommand with the settings read once
Handler = Callable[[argparse.Namespace, "Settings"], int]
#: what ``parser.add_subparsers()`` returns; each subcommand module adds itself to it
Subparsers = argparse._SubParsersAction  # argparse has no public name for it


def err(message: str) -> None:
    print(f"haul: {message}", file=sys.stderr)


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Wraps prose paragraphs to the terminal; keeps indented lines (examples) as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = []
        for para in text.split("\n\n"):
            lines = para.splitlines()
            if any(line.startswith(" ") or line.endswith(":") for line in lines):
                paragraphs.append("\n".join(indent + line for line in lines))
            else:
                paragraphs.append(
                    textwrap.fill(
                        " ".join(lines), width, initial_indent=indent, subsequent_indent=indent
                    )
                )
        return "\n\n".join(paragraphs)
