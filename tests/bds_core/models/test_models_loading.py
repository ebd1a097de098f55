"""load_model: local folders, pad tokens, and error messages that name the spec and the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bds_core.models import ModelLoadError, build_tiny_random_llama, load_model
from bds_core.models import loading as loading_module


@pytest.fixture
def tiny_folder(tmp_path: Path) -> Path:
    """The tiny model saved as an ordinary Hugging Face folder outside the cache."""
    model, tokenizer = build_tiny_random_llama()
    folder = tmp_path / "my-model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_local_folder_loads_with_padding_side_and_float32(tiny_folder: Path) -> None:
    loaded = load_model(str(tiny_folder), device="cpu", padding_side="left")
    assert loaded.source_path == tiny_folder.resolve()
    assert loaded.spec == str(tiny_folder)
    assert loaded.device == torch.device("cpu")
    assert loaded.model.dtype == torch.float32
    assert loaded.tokenizer.padding_side == "left"
    assert loaded.tokenizer.pad_token == "<|endoftext|>"
    assert loaded.model.config.pad_token_id == loaded.tokenizer.pad_token_id


def test_a_tokenizer_without_pad_token_pads_with_eos(tmp_path: Path) -> None:
    model, tokenizer = build_tiny_random_llama()
    tokenizer.pad_token = None
    model.config.pad_token_id = None
    model.generation_config.pad_token_id = None
    folder = tmp_path / "no-pad"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    loaded = load_model(folder, device="cpu")
    assert loaded.tokenizer.pad_token == loaded.tokenizer.eos_token == "<|im_end|>"
    assert loaded.model.config.pad_token_id == loaded.tokenizer.eos_token_id
    assert loaded.model.generation_config.pad_token_id == loaded.tokenizer.eos_token_id


def test_missing_local_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(ModelLoadError) as raised:
        load_model(str(missing), device="cpu")
    message = str(raised.value)
    assert f"model {str(missing)!r}: no such file or folder" in message
    assert "smollm2-135m-instruct" in message


def test_missing_gguf_file() -> None:
    with pytest.raises(ModelLoadError, match=r"'weights/model\.gguf': no such file or folder"):
        load_model("weights/model.gguf", device="cpu")


def test_folder_that_is_not_a_model(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ModelLoadError, match=r"has neither config\.json nor a \.gguf file"):
        load_model(str(tmp_path), device="cpu")


def test_a_file_that_is_not_gguf(tmp_path: Path) -> None:
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"\0" * 16)
    with pytest.raises(ModelLoadError, match=r"is a file but not a \.gguf file"):
        load_model(str(weights), device="cpu")


def test_an_adapter_folder_points_at_its_base_model(tmp_path: Path) -> None:
    config = {"base_model_name_or_path": "smollm2-135m-instruct", "peft_type": "LORA"}
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError) as raised:
        load_model(str(tmp_path), device="cpu")
    message = str(raised.value)
    assert "is a LoRA adapter folder, not a base model" in message
    assert "(smollm2-135m-instruct)" in message


def test_a_folder_with_a_non_causal_model(tmp_path: Path) -> None:
    from transformers import BertConfig, BertModel

    BertModel(
        BertConfig(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            vocab_size=50,
        )
    ).save_pretrained(tmp_path)
    with pytest.raises(
        ModelLoadError, match=r"is not a complete causal language model: \d+ weights"
    ):
        load_model(str(tmp_path), device="cpu")


def test_catalog_assets_that_are_not_language_models(isolated_cache: Path) -> None:
    with pytest.raises(ModelLoadError) as raised:
        load_model("strongreject", device="cpu")
    message = str(raised.value)
    assert "'strongreject' is a dataset asset, not a causal language model" in message
    assert "bds models pull strongreject" in message


def test_unreachable_hub_id_suggests_pull_or_a_local_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))  # nothing cached
    monkeypatch.setattr(loading_module, "hub_is_reachable", lambda: False)
    with pytest.raises(ModelLoadError) as raised:
        load_model("HuggingFaceTB/SmolLM2-135M-Instruct", device="cpu")
    message = str(raised.value)
    assert "'HuggingFaceTB/SmolLM2-135M-Instruct' is not a catalog name" in message
    assert "hub is not reachable" in message
    assert "bds models pull" in message and "local Hugging Face folder or .gguf file" in message


def test_a_typo_of_a_catalog_name_is_pointed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loading_module, "hub_is_reachable", lambda: False)
    with pytest.raises(ModelLoadError, match="did you mean 'smollm2-135m-instruct'"):
        load_model("smollm2-135m-instrukt", device="cpu")


def test_a_spec_that_is_nothing_at_all() -> None:
    with pytest.raises(ModelLoadError, match=r"is not a catalog name .* or a hub id"):
        load_model("not a model!", device="cpu")
    with pytest.raises(ModelLoadError, match="empty model spec"):
        load_model("  ", device="cpu")


def test_half_precision_on_cpu_is_refused(tiny_folder: Path) -> None:
    with pytest.raises(ValueError, match="needs a CUDA device"):
        load_model(str(tiny_folder), device="cpu", dtype=torch.bfloat16)


def test_bad_padding_side(tiny_folder: Path) -> None:
    with pytest.raises(ValueError, match="padding_side must be 'left' or 'right', got 'middle'"):
        load_model(str(tiny_folder), device="cpu", padding_side="middle")  # type: ignore[arg-type]
