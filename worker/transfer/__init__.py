"""Moving bytes between sources, stores and local disk, hashing them on the way.

The engine knows nothing about S3 or Azure: it asks an :class:`~worker.stores.base.ObjectSource`
for ranged reads and a :class:`~worker.stores.base.Store` for conditional creates.
"""
