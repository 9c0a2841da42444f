"""haul web: the dashboard, a read model of the events stream (contract section 10).

It imports from ``worker`` only the event models, the contract constants and the settings:
everything it shows is derived from the events, which proves the events are enough.
"""
