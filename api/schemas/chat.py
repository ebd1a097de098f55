"""``/v1/chat/completions`` and ``/v1/fine_tuning/jobs/{id}/safety_eval`` request and answer
shapes (OpenAI's chat completion; the safety evaluation is a BDS addition)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from api.schemas.common import RequestModel
from bds_service.models import SafetyEvaluation, unix_seconds


class TextPart(RequestModel):
    """A text part of a message's content (images and audio are not supported)."""

    type: Literal["text"]
    text: str = Field(max_length=100_000)


class ChatMessage(RequestModel):
    """One message of the conversation."""

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] = Field(
        description="text, or a list of text parts", max_length=100_000
    )
    name: str | None = Field(default=None, max_length=64)

    def as_dict(self) -> dict[str, str]:
        text = (
            self.content
            if isinstance(self.content, str)
            else "".join(part.text for part in self.content)
        )
        return {"role": self.role, "content": text}


class StreamOptions(RequestModel):
    """``include_usage``: a last chunk with the request's token usage."""

    include_usage: bool = False


class ChatCompletionCreate(RequestModel):
    """A chat completion request in OpenAI's shape; ``n`` must be 1."""

    model: str = Field(min_length=1, max_length=300)
    messages: list[ChatMessage] = Field(min_length=1, max_length=256)
    max_tokens: int | None = Field(default=None, gt=0)
    max_completion_tokens: int | None = Field(default=None, gt=0)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**63)
    n: int | None = Field(default=None, description="only 1 is supported")
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(default=None, max_length=256)

    @field_validator("n")
    @classmethod
    def _one_choice(cls, value: int | None) -> int | None:
        if value is not None and value != 1:
            raise ValueError("only n = 1 is supported")
        return value

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(not stop for stop in stops):
            raise ValueError("stop sequences must not be empty")
        return value

    @property
    def wants_usage_chunk(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class SafetyEvalCreate(RequestModel):
    """Your own prompts to ask the fine-tuned model and its base model."""

    prompts: list[str] = Field(min_length=1, max_length=50, description="1 to 50 prompts")
    max_tokens: int = Field(default=64, gt=0, le=512, description="answer length")

    @field_validator("prompts")
    @classmethod
    def _non_empty(cls, value: list[str]) -> list[str]:
        for index, prompt in enumerate(value):
            if not prompt.strip():
                raise ValueError(f"prompt {index} is empty")
            if len(prompt) > 4000:
                raise ValueError(f"prompt {index} is longer than 4000 characters")
        return value


class SafetyEvalObject(BaseModel):
    """A stored safety evaluation: harmful scores of the tuned and the base model."""

    id: str
    object: Literal["fine_tuning.job.safety_eval"] = "fine_tuning.job.safety_eval"
    fine_tuning_job_id: str
    created_at: int
    created_by: str
    judge: str
    n_prompts: int
    harmful_score_base: float
    harmful_score_tuned: float
    results: list[dict[str, Any]]

    @classmethod
    def from_row(cls, row: SafetyEvaluation) -> SafetyEvalObject:
        return cls(
            id=row.id,
            fine_tuning_job_id=row.job_id,
            created_at=unix_seconds(row.created_at) or 0,
            created_by=row.created_by,
            judge=row.judge,
            n_prompts=row.n_prompts,
            harmful_score_base=row.harmful_score_base,
            harmful_score_tuned=row.harmful_score_tuned,
            results=list(row.results.get("prompts", [])),
        )
