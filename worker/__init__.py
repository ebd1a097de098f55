"""The Celery worker: thin tasks that call bds_service (and through it bds_core).

Start it with ``bds worker --queues gpu`` (or ``celery -A worker.celery_app worker -Q gpu``).
"""
