"""Stage 0 of the benchmark, "provider alignment": the aligned model M0 every cell starts from.

LoRA-SFT of the base model on the alignment refusal set D_safe, merged into the weights and
saved as a Hugging Face folder under ``$BDS_CACHE_DIR/bench-aligned/`` (or a given cache
folder). The folder's name is the hash of everything that determines the weights (base model,
the bytes of D_safe, the training settings), so a second run with the same inputs loads M0 from
disk and a change to any input trains a new one. The folder is published atomically; a
half-written one is never used.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bds_core.models.lora import LoraSettings
from bds_core.training.callbacks import TrainerCallback

ALIGNMENT_VERSION = 1
"""Bump when stage 0's recipe changes, so older cached models are not reused."""

PROVENANCE_FILE = "alignment.json"


@dataclass(frozen=True)
class AlignmentSettings:
    """How M0 is made from the base model; all of it goes into the cache key."""

    steps: int = field(metadata={"help": "LoRA-SFT steps on D_safe"})
    batch_size: int = field(metadata={"help": "refusal examples per step"})
    learning_rate: float = field(metadata={"help": "LoRA AdamW learning rate"})
    lora: LoraSettings = field(metadata={"help": "LoRA settings, merged into the weights after"})
    max_length: int = field(metadata={"help": "token limit per example"})
    seed: int = field(metadata={"help": "seed of data order and LoRA init"})

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["lora"]["target_modules"] = list(self.lora.target_modules)
        return data


@dataclass(frozen=True)
class AlignedModel:
    """M0: where its merged weights are, its cache key and how it was made."""

    path: Path
    key: str
    provenance: dict[str, Any]
    from_cache: bool


def default_aligned_cache() -> Path:
    """``bench-aligned`` under the model cache (``$BDS_CACHE_DIR``, default ``~/.cache/bds``)."""
    from bds_core.models import cache_dir

    return cache_dir() / "bench-aligned"


def model_identity(spec: str) -> str:
    """What identifies a base model's weights in the cache key.

    A catalog name with its catalog version; a local folder or file by its resolved path and
    the sizes of its top-level files (hashing gigabytes of weights would cost more than it
    protects); anything else (a hub id) as written.
    """
    from bds_core.models import CATALOG

    entry = CATALOG.get(spec)
    if entry is not None:
        return f"catalog:{entry.name}@{entry.version}"
    path = Path(spec).expanduser()
    if path.exists():
        resolved = path.resolve()
        files = [resolved] if resolved.is_file() else sorted(resolved.iterdir())
        sizes = [f"{item.name}:{item.stat().st_size}" for item in files if item.is_file()]
        return f"path:{resolved}|{'|'.join(sizes)}"
    return f"hub:{spec}"


def alignment_key(model: str, safety_file: Path, settings: AlignmentSettings) -> str:
    """sha256 of the base model's identity, D_safe's bytes and the stage-0 settings."""
    from bds_core.bench.build import file_sha256

    payload = {
        "version": ALIGNMENT_VERSION,
        "model": model_identity(model),
        "safety_sha256": file_sha256(safety_file),
        "settings": settings.to_dict(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def aligned_model_dir(cache_root: Path, key: str) -> Path:
    """The cache folder of the aligned model with this key."""
    return cache_root / f"m0-{key[:24]}"


def ensure_aligned_model(
    model: str,
    safety_file: Path,
    settings: AlignmentSettings,
    cache_root: Path | None = None,
    device: str | None = None,
    callbacks: Sequence[TrainerCallback] = (),
) -> AlignedModel:
    """M0 for these inputs: loaded from the cache, or trained, merged and cached now.

    ``callbacks`` receive the stage-0 trainer's events (progress) when it trains.
    """
    from bds_core.models.assets import build_directory_atomically, is_complete_directory

    root = cache_root if cache_root is not None else default_aligned_cache()
    key = alignment_key(model, safety_file, settings)
    folder = aligned_model_dir(root, key)
    if is_complete_directory(folder):
        return AlignedModel(folder, key, _read_provenance(folder), from_cache=True)

    def build(staging: Path) -> None:
        _train_and_merge(model, safety_file, settings, key, staging, device, callbacks)

    manifest = {"name": "bench-aligned-model", "key": key, "base_model": model}
    build_directory_atomically(folder, build, manifest)
    return AlignedModel(folder, key, _read_provenance(folder), from_cache=False)


def _train_and_merge(
    model: str,
    safety_file: Path,
    settings: AlignmentSettings,
    key: str,
    target: Path,
    device: str | None,
    callbacks: Sequence[TrainerCallback],
) -> None:
    from bds_core.bench.build import file_sha256
    from bds_core.training import BDSTrainer, TrainConfig

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bds-bench-align-") as work:
        config = TrainConfig(
            model=model,
            train_file=safety_file,
            out_dir=Path(work),
            method="sft",
            lora=settings.lora,
            learning_rate=settings.learning_rate,
            batch_size=settings.batch_size,
            max_steps=settings.steps,
            max_length=settings.max_length,
            seed=settings.seed,
            checkpoint_every=0,
            device=device,
        )
        trainer = BDSTrainer(config, callbacks=callbacks)
        trainer.setup()
        result = trainer.train()
        merged = trainer.model.merge_and_unload()
        merged.save_pretrained(str(target), safe_serialization=True)
        trainer.tokenizer.save_pretrained(str(target))
    provenance = {
        "key": key,
        "version": ALIGNMENT_VERSION,
        "base_model": model,
        "base_model_identity": model_identity(model),
        "safety_file": safety_file.name,
        "safety_sha256": file_sha256(safety_file),
        "num_safety_examples": result.metrics["num_train_examples"],
        "settings": settings.to_dict(),
        "steps": result.steps,
        "seconds_per_step": result.metrics["seconds_per_step"],
        "final_loss": result.metrics["final_loss"],
        "seconds": time.monotonic() - started,
    }
    (target / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")


def _read_provenance(folder: Path) -> dict[str, Any]:
    path = folder / PROVENANCE_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise RuntimeError(
            f"aligned model {folder} has no readable {PROVENANCE_FILE} ({error}); delete the "
            "folder so stage 0 runs again"
        ) from None
    if not isinstance(data, dict):
        raise RuntimeError(f"{path} does not hold a JSON object; delete {folder} and rerun")
    return data
