"""The HTTP API (FastAPI): OpenAI-shaped files and fine-tuning jobs, plus BDS safety reports.

Entry point for uvicorn: ``api.app:app`` (or the factory ``api.app:create_app``).
"""
