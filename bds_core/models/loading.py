"""Load a base causal LM and its tokenizer from a catalog name, a local folder, a GGUF file or a
hub id, ready for training or generation on the chosen device.

Remote code is never run (``trust_remote_code=False`` everywhere): a customer-facing service
must not execute Python that arrives with model files.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import urlparse

import torch
import transformers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from bds_core.models.assets import (
    AssetError,
    ProgressCallback,
    build_directory_atomically,
    converted_model_dir,
    is_complete_directory,
    pull_asset,
)
from bds_core.models.catalog import (
    CATALOG,
    CatalogEntry,
    catalog_names,
    closest_name,
    get_entry,
)
from bds_core.models.device import resolve_device, resolve_dtype

logger = logging.getLogger(__name__)

PaddingSide = Literal["left", "right"]

# Hugging Face repo ids: "name" or "owner/name", letters, digits, '-', '_' and '.'.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")
_HUB_PROBE_TIMEOUT_S = 3.0


class ModelLoadError(RuntimeError):
    """A model spec could not be resolved or loaded; the message names the spec and what to do."""


@dataclass
class LoadedModel:
    """A causal LM with its tokenizer (pad token set) and where it came from."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    spec: str
    source_path: Path | None  # local folder or .gguf file the weights came from; None for hub ids

    @property
    def device(self) -> torch.device:
        """The device the model's parameters are on."""
        return next(self.model.parameters()).device


def load_model(
    spec: str | os.PathLike[str],
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    *,
    padding_side: PaddingSide = "right",
    progress: ProgressCallback | None = None,
) -> LoadedModel:
    """Load ``spec``: a catalog name, a local HF folder, a ``.gguf`` file (or a folder holding
    exactly one) or a hub id, in that order of precedence.

    ``device`` defaults to pick_device(); ``dtype`` to float32 (half precision only on CUDA).
    The tokenizer gets a pad token (its eos token when it has none) and ``padding_side``.
    Raises ModelLoadError with a message naming the spec when it cannot be loaded.
    """
    spec_text = os.fspath(spec).strip()
    if not spec_text:
        raise ModelLoadError(
            f"empty model spec; use a catalog name ({', '.join(catalog_names())}), a local "
            "folder or .gguf file, or a hub id"
        )
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    target_device = resolve_device(device)
    target_dtype = resolve_dtype(dtype, target_device)
    report = progress or (lambda message: logger.info(message))

    entry = CATALOG.get(spec_text)
    source_path: Path | None
    if entry is not None:
        model, tokenizer, source_path = _load_catalog_entry(entry, target_dtype, report)
    else:
        local = Path(spec_text).expanduser()
        if local.exists():
            source_path = local.resolve()
            model, tokenizer = _load_local_path(spec_text, source_path, target_dtype, report)
        elif _looks_like_path(spec_text):
            raise ModelLoadError(
                f"model {spec_text!r}: no such file or folder ({local.absolute()}). Pass an "
                "existing Hugging Face model folder or .gguf file, or a catalog name "
                f"({', '.join(catalog_names())})"
            )
        elif _HUB_ID.match(spec_text) and ".." not in spec_text:
            source_path = None
            model, tokenizer = _load_hub_id(spec_text, target_dtype, report)
        else:
            raise ModelLoadError(
                f"model {spec_text!r} is not a catalog name ({', '.join(catalog_names())}), "
                "an existing local folder or .gguf file, or a hub id (owner/name)"
            )

    _prepare_tokenizer(tokenizer, spec_text, padding_side, entry)
    _align_pad_token(model, tokenizer)
    # Typed as nn.Module.to: transformers' own `to` is wrapped in a way mypy misreads.
    cast(torch.nn.Module, model).to(device=target_device, dtype=target_dtype)
    return LoadedModel(model=model, tokenizer=tokenizer, spec=spec_text, source_path=source_path)


def _looks_like_path(spec: str) -> bool:
    """Whether the user evidently meant a local path (and not a hub id like owner/name)."""
    return (
        spec.startswith(("/", "./", "../", "~", "."))
        or spec.endswith(".gguf")
        or (os.sep != "/" and os.sep in spec)
    )


def _load_catalog_entry(
    entry: CatalogEntry, dtype: torch.dtype, report: ProgressCallback
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, Path]:
    if entry.kind != "causal-lm":
        raise ModelLoadError(
            f"{entry.name!r} is a {entry.kind} asset, not a causal language model; get its path "
            f"with pull_asset({entry.name!r}) or `bds models pull {entry.name}`"
        )
    try:
        path = pull_asset(entry.name, progress=report)
    except AssetError as error:
        raise ModelLoadError(f"model {entry.name!r}: {error}") from error
    folder = (
        ensure_float_checkpoint(entry.name, progress=report) if path.suffix == ".gguf" else path
    )
    model, tokenizer = _load_hf_folder(entry.name, folder, dtype)
    return model, tokenizer, path


def ensure_float_checkpoint(name: str, progress: ProgressCallback | None = None) -> Path:
    """The float32 Hugging Face copy of GGUF catalog model ``name``, converted on first call.

    Dequantising a GGUF takes about a minute on CPU and the result loads in a second, so it is
    done once per cache (by `bds models pull` or the first load_model) and kept next to it.
    """
    report = progress or (lambda message: logger.info(message))
    entry = get_entry(name)
    converted = converted_model_dir(name)
    if is_complete_directory(converted):
        return converted
    gguf_path = pull_asset(name, progress=report)
    if gguf_path.suffix != ".gguf":
        raise ValueError(f"{name!r} is not a GGUF catalog model")
    report(f"converting {gguf_path.name} to a float checkpoint in {converted} (once)")
    model, tokenizer = _load_gguf(name, gguf_path, torch.float32)

    def save(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    manifest = {"name": entry.name, "version": entry.version, "converted_from": str(gguf_path)}
    return build_directory_atomically(converted, save, manifest)


def _load_local_path(
    spec: str, path: Path, dtype: torch.dtype, report: ProgressCallback
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelLoadError(
                f"model {spec!r} is a file but not a .gguf file; pass a Hugging Face model "
                "folder (with config.json) or a .gguf file"
            )
        report(f"loading GGUF {path} (dequantising to float, this takes a while on CPU)")
        return _load_gguf(spec, path, dtype)
    if (path / "config.json").is_file():
        return _load_hf_folder(spec, path, dtype)
    gguf_files = sorted(path.glob("*.gguf"))
    if len(gguf_files) == 1:
        report(f"loading GGUF {gguf_files[0]} (dequantising to float, this takes a while on CPU)")
        return _load_gguf(spec, gguf_files[0], dtype)
    if len(gguf_files) > 1:
        names = ", ".join(file.name for file in gguf_files)
        raise ModelLoadError(
            f"model {spec!r}: folder holds several .gguf files ({names}); pass one"
        )
    adapter_config = path / "adapter_config.json"
    if adapter_config.is_file():
        base = _read_json(adapter_config).get("base_model_name_or_path", "unknown")
        raise ModelLoadError(
            f"model {spec!r} is a LoRA adapter folder, not a base model; load its base model "
            f"({base}) and attach the adapter with PeftModel.from_pretrained"
        )
    raise ModelLoadError(
        f"model {spec!r}: folder {path} has neither config.json nor a .gguf file, so it is not "
        "a Hugging Face model folder"
    )


def _load_hf_folder(
    spec: str, folder: Path, dtype: torch.dtype
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    options: dict[str, Any] = {"local_files_only": True, "trust_remote_code": False}
    return _from_pretrained(spec, str(folder), options, options, dtype)


def _load_gguf(
    spec: str, gguf_path: Path, dtype: torch.dtype
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    tokenizer_options: dict[str, Any] = {
        "gguf_file": gguf_path.name,
        "local_files_only": True,
        "trust_remote_code": False,
    }
    model_options = dict(tokenizer_options)
    dequantize_config = _dequantizing_gguf_config(gguf_path.name)
    if dequantize_config is not None:
        model_options["quantization_config"] = dequantize_config
    model, tokenizer = _from_pretrained(
        spec, str(gguf_path.parent), tokenizer_options, model_options, dtype
    )
    # transformers 5 keeps a GGUF "quantizer" attached even to a dequantised model, which blocks
    # save_pretrained and marks it untrainable; the weights are plain floats, so drop it.
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    return model, tokenizer


def _dequantizing_gguf_config(gguf_name: str) -> Any:
    """A GgufConfig asking for plain float weights, on transformers versions that have one.

    Newer transformers can keep GGUF weights packed (when a matmul kernel is installed); LoRA
    training and saving need ordinary float weights, so ask for those explicitly.
    """
    gguf_config_class = getattr(transformers, "GgufConfig", None)
    if gguf_config_class is None:
        return None  # older versions always dequantise
    return gguf_config_class(gguf_file=gguf_name, dequantize=True)


def _dtype_option(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """from_pretrained's dtype keyword: ``dtype`` since transformers 4.56, else ``torch_dtype``."""
    major, minor = (int(part) for part in transformers.__version__.split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


def _from_pretrained(
    spec: str,
    location: str,
    tokenizer_options: dict[str, Any],
    model_options: dict[str, Any],
    dtype: torch.dtype,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, **tokenizer_options)
        model_and_info = AutoModelForCausalLM.from_pretrained(
            location, **model_options, **_dtype_option(dtype), output_loading_info=True
        )
    except ValueError as error:
        if "trust_remote_code" in str(error):
            raise ModelLoadError(
                f"model {spec!r} needs custom Python code from its repository "
                "(trust_remote_code), which this service never runs"
            ) from error
        raise ModelLoadError(
            f"model {spec!r} could not be loaded as a causal language model: {error}"
        ) from error
    except OSError as error:
        raise ModelLoadError(
            f"model {spec!r} could not be loaded from {location}: {error}"
        ) from error
    model, loading_info = cast(tuple[PreTrainedModel, dict[str, Any]], model_and_info)
    # transformers fills weights missing from a checkpoint with random values and only logs it; a
    # base model with a random head (an encoder such as BERT, say) must not pass as a causal LM.
    incomplete = sorted(loading_info["missing_keys"]) + sorted(
        str(key) for key in loading_info.get("mismatched_keys", ())
    )
    if incomplete:
        raise ModelLoadError(
            f"model {spec!r} is not a complete causal language model: {len(incomplete)} weights "
            f"of {type(model).__name__} are missing or have the wrong shape in the checkpoint "
            f"({', '.join(incomplete[:3])}{', ...' if len(incomplete) > 3 else ''})"
        )
    return model, tokenizer


def _load_hub_id(
    hub_id: str, dtype: torch.dtype, report: ProgressCallback
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    names = ", ".join(catalog_names())
    close = closest_name(hub_id)
    hint = f" (did you mean {close!r}?)" if close else ""
    local_options: dict[str, Any] = {"local_files_only": True, "trust_remote_code": False}
    try:
        # A hub model downloaded earlier sits in the Hugging Face cache and needs no network.
        return _from_pretrained(hub_id, hub_id, local_options, local_options, dtype)
    except ModelLoadError as error:
        if not isinstance(error.__cause__, OSError):
            raise
    if not hub_is_reachable():
        raise ModelLoadError(
            f"model {hub_id!r} is not a catalog name ({names}){hint} or a local path, and the "
            "Hugging Face hub is not reachable from this machine to fetch it as a hub id. Use a "
            "catalog model (`bds models pull NAME`) or pass a local Hugging Face folder or "
            ".gguf file"
        )
    report(f"downloading {hub_id} from the Hugging Face hub")
    online_options: dict[str, Any] = {"trust_remote_code": False}
    try:
        return _from_pretrained(hub_id, hub_id, online_options, online_options, dtype)
    except ModelLoadError as error:
        raise ModelLoadError(
            f"{error}. {hub_id!r} is not a catalog name ({names}){hint}; check the hub id, or "
            "pass a local Hugging Face folder or .gguf file"
        ) from error.__cause__


def hub_is_reachable() -> bool:
    """Whether the Hugging Face hub answers a TCP connection within a few seconds.

    Checked before any hub download because transformers otherwise retries for half a minute on
    machines with no route to the hub. ``HF_HUB_OFFLINE=1`` counts as unreachable.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=_HUB_PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def _prepare_tokenizer(
    tokenizer: PreTrainedTokenizerBase,
    spec: str,
    padding_side: PaddingSide,
    entry: CatalogEntry | None,
) -> None:
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelLoadError(
                f"model {spec!r}: its tokenizer has neither a pad nor an eos token, so batches "
                "cannot be padded; add a pad token to the model folder's tokenizer"
            )
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    if getattr(tokenizer, "chat_template", None) is None:
        if entry is not None and entry.chat_template is not None:
            tokenizer.chat_template = entry.chat_template
        else:
            logger.warning(
                "model %r has no chat template; chat-formatted data cannot be encoded", spec
            )


def _align_pad_token(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Give the model's config and generation config the tokenizer's pad id when they lack one."""
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None and generation_config.pad_token_id is None:
        generation_config.pad_token_id = tokenizer.pad_token_id


def _read_json(path: Path) -> dict[str, Any]:
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return content if isinstance(content, dict) else {}
