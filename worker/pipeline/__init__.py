"""The three jobs of the contract: prepare inputs, store outputs, purge datums.

Each job takes a :class:`~worker.pipeline.runtime.Runtime` (settings, Redis, stores, events)
and a validated message, and returns a JSON-able summary. The Celery tasks in ``tasks/`` are thin
wrappers around them.
"""
