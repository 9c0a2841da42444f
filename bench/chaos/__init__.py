"""``python -m bench.chaos``: haul under worker kills and Redis restarts (issue 11's proof)."""
