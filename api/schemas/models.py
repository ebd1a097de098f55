"""``/v1/models`` objects."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class ModelObject(BaseModel):
    """A base model this deployment fine-tunes, or one of your fine-tuned models."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
