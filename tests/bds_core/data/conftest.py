"""Fixtures for bds_core.data tests: a tiny ChatML tokenizer built in the test process."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest


def load_tiny_chat() -> ModuleType:
    """Import tests/bds_core/data/tiny_chat.py by path (the tests folders are not packages)."""
    name = "bds_tests_tiny_chat"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("tiny_chat.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def chat_tokenizer() -> Any:
    """Byte-level BPE tokenizer with a ChatML chat template, pad and eos (<|im_end|>)."""
    return load_tiny_chat().build_tokenizer(with_template=True)


@pytest.fixture(scope="session")
def plain_tokenizer() -> Any:
    """The same tokenizer without a chat template (exercises the fallback template)."""
    return load_tiny_chat().build_tokenizer(with_template=False)
