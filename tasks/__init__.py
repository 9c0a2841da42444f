"""haul's Celery app.

``celery -A tasks worker -Q haul.inputs,haul.outputs,haul.control,haul.watch``
"""

from tasks.app import app

__all__ = ["app"]
