"""LoraSettings validation and apply_lora on the tiny model: only the adapter trains."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from peft import PeftModel

from bds_core.models import LoraSettings, apply_lora, build_tiny_random_llama


def test_defaults() -> None:
    settings = LoraSettings()
    assert (settings.r, settings.alpha, settings.dropout) == (8, 16, 0.0)
    assert settings.target_modules == ("q_proj", "k_proj", "v_proj", "o_proj")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"r": 0}, "lora r must be a positive integer, got 0"),
        ({"r": -4}, "lora r must be a positive integer, got -4"),
        ({"r": 2.5}, "lora r must be a positive integer, got 2.5"),
        ({"alpha": 0}, "lora alpha must be positive, got 0"),
        ({"dropout": 1.0}, r"lora dropout must be in \[0, 1\), got 1.0"),
        ({"dropout": -0.1}, r"lora dropout must be in \[0, 1\), got -0.1"),
        ({"target_modules": ()}, "lora target_modules must name at least one module"),
        ({"target_modules": ("q_proj", "")}, "lora target_modules must be non-empty names"),
    ],
)
def test_invalid_settings_name_the_field(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LoraSettings(**overrides)


def test_target_modules_accept_a_list_or_a_comma_separated_string() -> None:
    assert LoraSettings(target_modules=["q_proj", "v_proj"]).target_modules == ("q_proj", "v_proj")  # type: ignore[arg-type]
    assert LoraSettings(target_modules="q_proj, v_proj").target_modules == ("q_proj", "v_proj")  # type: ignore[arg-type]


def test_lora_trains_only_the_adapter_and_starts_as_the_base_model() -> None:
    model, _ = build_tiny_random_llama()
    input_ids = torch.tensor([list(b"hello there"), list(b"general kenobi")[:11]])
    with torch.no_grad():
        base_logits = model(input_ids=input_ids).logits.clone()

    peft_model = apply_lora(model, LoraSettings(r=4, alpha=8, dropout=0.1))
    assert isinstance(peft_model, PeftModel)
    trainable = {name for name, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable, "the adapter has trainable parameters"
    assert all("lora_" in name for name in trainable)
    adapted = {name.split(".lora_")[0].rsplit(".", 1)[-1] for name in trainable}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj"}

    peft_model.eval()
    with torch.no_grad():
        assert torch.allclose(peft_model(input_ids=input_ids).logits, base_logits), "B starts at 0"

    peft_model.train()
    output = peft_model(input_ids=input_ids, labels=input_ids)
    output.loss.backward()
    grads = {name: p.grad for name, p in peft_model.named_parameters() if p.requires_grad}
    assert all(grad is not None for grad in grads.values())
    assert any(grad is not None and grad.abs().sum() > 0 for grad in grads.values())
    frozen = [p for name, p in peft_model.named_parameters() if not p.requires_grad]
    assert all(p.grad is None for p in frozen)


def test_unknown_target_module_lists_the_linear_modules() -> None:
    model, _ = build_tiny_random_llama()
    with pytest.raises(ValueError) as raised:
        apply_lora(model, LoraSettings(target_modules=("q_proj", "query_key_value")))
    message = str(raised.value)
    assert "['query_key_value']" in message
    assert "gate_proj" in message and "q_proj" in message
