"""haul's network layer: everything that opens a socket for a store.

- :mod:`.guard`: the private-address guard (every client resolves through it before connecting).
- :mod:`.pool`: keep-alive ``http.client`` connections read with ``readinto`` (the bulk path).
- :mod:`.lane`: many small GETs on one thread with a selector (the small-object lane).
- :mod:`.httpx_client`: the httpx client, for when the fast path is off.

Stores (:mod:`worker.stores`) use these; nothing under ``worker/stores/`` opens a socket itself.
"""
