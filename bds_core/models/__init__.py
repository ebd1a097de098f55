"""Base models, LoRA and catalog assets: ``load_model``, ``apply_lora``, ``pull_asset``.

Heavy libraries (torch, transformers, peft) are imported on first use of the names that need
them, so ``from bds_core.models import pull_asset`` stays cheap for the CLI and the web service.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bds_core.lazy import lazy_attributes
from bds_core.models.assets import (
    AssetError,
    AssetIntegrityError,
    asset_path,
    cache_dir,
    converted_model_dir,
    is_cached,
    pull_asset,
)
from bds_core.models.catalog import (
    CATALOG,
    CatalogEntry,
    UnknownAssetError,
    WheelSource,
    catalog_names,
    get_entry,
)

if TYPE_CHECKING:
    from bds_core.models.device import pick_device, resolve_device, resolve_dtype
    from bds_core.models.loading import (
        LoadedModel,
        ModelLoadError,
        ensure_float_checkpoint,
        load_model,
    )
    from bds_core.models.lora import LoraSettings, apply_lora, lora_config
    from bds_core.models.tiny import build_tiny_random_llama

_LAZY_NAMES = {
    "pick_device": "bds_core.models.device",
    "resolve_device": "bds_core.models.device",
    "resolve_dtype": "bds_core.models.device",
    "LoadedModel": "bds_core.models.loading",
    "ModelLoadError": "bds_core.models.loading",
    "load_model": "bds_core.models.loading",
    "ensure_float_checkpoint": "bds_core.models.loading",
    "LoraSettings": "bds_core.models.lora",
    "apply_lora": "bds_core.models.lora",
    "lora_config": "bds_core.models.lora",
    "build_tiny_random_llama": "bds_core.models.tiny",
}


__getattr__ = lazy_attributes(__name__, _LAZY_NAMES)


__all__ = [
    "CATALOG",
    "AssetError",
    "AssetIntegrityError",
    "CatalogEntry",
    "LoadedModel",
    "LoraSettings",
    "ModelLoadError",
    "UnknownAssetError",
    "WheelSource",
    "apply_lora",
    "asset_path",
    "build_tiny_random_llama",
    "cache_dir",
    "catalog_names",
    "converted_model_dir",
    "ensure_float_checkpoint",
    "get_entry",
    "is_cached",
    "load_model",
    "lora_config",
    "pick_device",
    "pull_asset",
    "resolve_device",
    "resolve_dtype",
]
