"""``python -m worker.cli``: the same as the ``haul`` command."""

import sys

from worker.cli.entry import main

sys.exit(main())
