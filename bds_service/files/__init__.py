"""Uploaded files: registration, validation reports, safety reports, deletion."""
