"""``python -m worker.cli``: the same as the ``haul`` command."""

from worker.cli.entry import run

run()
