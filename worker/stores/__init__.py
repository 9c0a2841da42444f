"""Data stores: one protocol (:mod:`worker.stores.base`), one module per backend.

Each backend module ends in a :class:`~worker.stores.plugin.StoreType` descriptor, and
:mod:`worker.stores.registry` lists them. Backends import their SDKs lazily, so
``import worker.stores`` stays light and a missing optional extra fails with one clear
:class:`~worker.errors.MissingExtra`. Network plumbing lives in :mod:`worker.net`.
"""
