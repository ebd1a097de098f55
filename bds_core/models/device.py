"""Device and dtype choice: CUDA when available, else CPU; ``BDS_DEVICE`` overrides."""

from __future__ import annotations

import os

import torch

DEVICE_ENV = "BDS_DEVICE"

_DTYPE_NAMES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def pick_device() -> torch.device:
    """``$BDS_DEVICE`` if set (cpu, cuda, cuda:N), else cuda when available, else cpu."""
    override = os.environ.get(DEVICE_ENV, "").strip()
    if override and override != "auto":
        return resolve_device(override, source=f"{DEVICE_ENV}={override}")
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def resolve_device(device: torch.device | str | None, source: str = "device") -> torch.device:
    """A torch.device from a name or None (None means pick_device()); checks CUDA is there."""
    if device is None:
        return pick_device()
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(
            f"{source}: {device!r} is not a device (use cpu, cuda or cuda:N)"
        ) from error
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{source}: CUDA was asked for but is not available on this machine")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(
                f"{source}: {resolved} does not exist ({torch.cuda.device_count()} CUDA devices)"
            )
    return resolved


def resolve_dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    """The weights' dtype: float32 unless asked otherwise; half precision only on CUDA.

    bfloat16 also needs a GPU that supports it. float32 stays the default everywhere because
    training results must not depend on which machine ran them.
    """
    if dtype is None:
        return torch.float32
    if isinstance(dtype, str):
        try:
            resolved = _DTYPE_NAMES[dtype.strip().lower().removeprefix("torch.")]
        except KeyError:
            raise ValueError(
                f"dtype {dtype!r} is not supported (use float32, bfloat16 or float16)"
            ) from None
    else:
        resolved = dtype
    if resolved not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"dtype {resolved} is not supported (use float32, bfloat16 or float16)")
    if resolved != torch.float32 and device.type != "cuda":
        raise ValueError(
            f"dtype {resolved} needs a CUDA device (got {device}); use float32 on {device.type}"
        )
    if resolved == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise ValueError("dtype bfloat16 is not supported by this GPU; use float32 or float16")
    return resolved
