"""Fixtures for bds_core.eval tests: the tiny ChatML tokenizer and a tiny random LLaMA."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest


def _load_tiny_chat() -> ModuleType:
    # Shared with tests/bds_core/data; loaded by path because test folders are not packages.
    name = "bds_tests_tiny_chat"
    if name in sys.modules:
        return sys.modules[name]
    path = Path(__file__).parents[1] / "data" / "tiny_chat.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def chat_tokenizer() -> Any:
    """Byte-level BPE tokenizer with a ChatML chat template, pad and eos (<|im_end|>)."""
    return _load_tiny_chat().build_tokenizer(with_template=True)


@pytest.fixture
def tiny_model(chat_tokenizer: Any) -> Any:
    """A fresh 2-layer LLaMA (hidden 64) with random weights from a fixed seed, in eval mode."""
    return _load_tiny_chat().build_tiny_llama(chat_tokenizer, seed=0)
