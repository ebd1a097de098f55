"""Request and response models of the API (pydantic), separate from the database models."""
