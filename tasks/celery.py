"""The app that ``celery -A tasks worker`` runs: the one place the worker reads its settings.

Celery looks for ``tasks.app`` first; that is the module with :func:`~tasks.app.create_app`,
so it goes on to this module (``tasks.celery``) and takes its ``app``.
"""

from tasks.app import create_app
from worker.settings import load_settings

app = create_app(load_settings())

__all__ = ["app"]
