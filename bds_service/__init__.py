"""Domain and persistence shared by the API and the worker.

Settings, SQLAlchemy models, tenant-scoped repositories, the job state machine, the audit log
and artifact storage live here. Nothing in this package imports FastAPI or Celery; both the
``api`` and the ``worker`` packages build on it.
"""
