"""Operating haul: Prometheus metrics, health, structured logs with task context (section 11)."""
