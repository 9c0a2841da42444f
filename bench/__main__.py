"""``.venv/bin/python -m bench [--big] [--runs N] [--only http,small,...]``."""

from bench.run import main

raise SystemExit(main())
