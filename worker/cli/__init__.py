"""``haul``: the command line of the haul worker (entry point ``haul = worker.cli:run``).

The package, one job a module:

- :mod:`~worker.cli.entry`: :func:`main` (:func:`run` as the console script); the settings
  are read once there and handed to each subcommand.
- :mod:`~worker.cli.parser`: the top-level parser and the list of subcommands (add one there).
- :mod:`~worker.cli.submit`, :mod:`~worker.cli.events`, :mod:`~worker.cli.commands`: the
  subcommands, each a ``register`` (its parser) and a run function.
- :mod:`~worker.cli.client`: Redis (the events stream) and Celery (sending only).
- :mod:`~worker.cli.rendering`: events as readable lines.
- :mod:`~worker.cli.fetch` (``haul fetch``'s engine run) and :mod:`~worker.cli.demo`.

Heavy imports (Celery, the pipeline, the demo) happen inside the subcommand that needs them,
so ``haul --help`` and ``haul hash`` stay fast.
"""

from worker.cli.common import EXIT_FAILED, EXIT_OK, EXIT_TIMEOUT, EXIT_USAGE
from worker.cli.entry import main, run

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_TIMEOUT", "EXIT_USAGE", "main", "run"]
