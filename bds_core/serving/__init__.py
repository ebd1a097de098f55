"""Serving fine-tuned models: chat generation with LoRA adapters switched per request.

``InferenceEngine`` keeps each base model loaded once, holds the LoRA adapters it was asked to
serve (registered by name and folder, loaded into memory on first use and kept in an LRU),
and batches concurrent requests for the same model and adapter into one forward pass per
generated token. It knows nothing of HTTP: ``worker.inference`` wraps it in an
OpenAI-compatible server.
"""

from __future__ import annotations

from bds_core.serving.engine import (
    AdapterError,
    Completion,
    EngineRequestError,
    InferenceEngine,
    ModelNotServedError,
    RequestHandle,
    SamplingParams,
    adapter_base_model,
)

__all__ = [
    "AdapterError",
    "Completion",
    "EngineRequestError",
    "InferenceEngine",
    "ModelNotServedError",
    "RequestHandle",
    "SamplingParams",
    "adapter_base_model",
]
