"""Data stores: one protocol (:mod:`worker.stores.base`), one module per backend.

Backends import their SDKs lazily, so ``import worker.stores`` stays light and a missing
optional extra fails with one clear :class:`~worker.errors.MissingExtra`.
"""
