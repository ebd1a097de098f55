"""pick_device and dtype choice."""

from __future__ import annotations

import pytest
import torch

from bds_core.models import pick_device, resolve_dtype


def test_default_is_cuda_when_available_else_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BDS_DEVICE", raising=False)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device().type == expected


def test_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BDS_DEVICE", "cpu")
    assert pick_device() == torch.device("cpu")


def test_env_with_a_bad_value_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BDS_DEVICE", "gpu0")
    with pytest.raises(ValueError, match=r"BDS_DEVICE=gpu0: 'gpu0' is not a device"):
        pick_device()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BDS_DEVICE", "cuda")
    with pytest.raises(ValueError, match="CUDA was asked for but is not available"):
        pick_device()


def test_dtypes() -> None:
    cpu = torch.device("cpu")
    assert resolve_dtype(None, cpu) == torch.float32
    assert resolve_dtype("float32", cpu) == torch.float32
    with pytest.raises(ValueError, match=r"torch.bfloat16 needs a CUDA device"):
        resolve_dtype("bf16", cpu)
    with pytest.raises(ValueError, match=r"dtype 'int8' is not supported"):
        resolve_dtype("int8", cpu)
