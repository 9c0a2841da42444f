"""haul's Celery app: ``celery -A tasks worker -Q haul.inputs,haul.outputs,haul.control,...``.

Importing this package does nothing: :func:`tasks.app.create_app` builds an app from a settings
object, and ``tasks/celery.py`` (what ``celery -A tasks`` finds) builds the worker's own.
"""
