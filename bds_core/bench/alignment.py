"""Stage 0 of the benchmark, "provider alignment": the aligned model M0 every cell starts from.

LoRA-SFT of the base model on the alignment refusal set D_safe together with a benign
retention set (ordinary requests answered normally: items of the synthetic tasks, and general
everyday and look-unsafe-but-safe prompts answered by the unaligned base model itself, kept
when the judge sees no refusal), merged into the weights and saved as a
Hugging Face folder under ``$BDS_CACHE_DIR/bench-aligned/`` (or a given cache folder). Without
the retention set, SmolLM2-135M learns "refuse everything" (measured: over-refusal 100% on the
benign task, and the first benign fine-tune then erases the refusals wholesale); with it, M0
refuses harmful requests and answers benign ones, like a provider's aligned model.

The folder's name is the hash of everything that determines the weights (base model, the bytes
of D_safe and of the retention examples, the training settings), so a second run with the same
inputs loads M0 from disk and a change to any input trains a new one. The folder is published
atomically; a half-written one is never used.
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

from bds_core.data import Example, load_examples, write_examples
from bds_core.models.lora import LoraSettings
from bds_core.training.callbacks import TrainerCallback

ALIGNMENT_VERSION = 3
"""Bump when stage 0's recipe changes, so older cached models are not reused."""

PROVENANCE_FILE = "alignment.json"


@dataclass(frozen=True)
class AlignmentSettings:
    """How M0 is made from the base model; all of it goes into the cache key."""

    steps: int = field(metadata={"help": "LoRA-SFT steps on D_safe plus the retention set"})
    batch_size: int = field(metadata={"help": "examples per step"})
    learning_rate: float = field(metadata={"help": "LoRA AdamW learning rate"})
    lora: LoraSettings = field(metadata={"help": "LoRA settings, merged into the weights after"})
    max_length: int = field(metadata={"help": "token limit per example"})
    seed: int = field(metadata={"help": "seed of data order and LoRA init"})
    retention_per_file: int = field(
        default=0, metadata={"help": "benign examples taken from the start of each retention file"}
    )
    retention_general: int = field(
        default=0,
        metadata={"help": "examples taken from the start of the general retention file"},
    )

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


def alignment_key(
    model: str,
    safety_file: Path,
    settings: AlignmentSettings,
    retention_files: Sequence[Path] = (),
    general_file: Path | None = None,
) -> str:
    """sha256 of the base model's identity, the bytes of D_safe and of the retention files,
    and the stage-0 settings."""
    from bds_core.bench.build import file_sha256

    payload = {
        "version": ALIGNMENT_VERSION,
        "model": model_identity(model),
        "safety_sha256": file_sha256(safety_file),
        "retention_sha256": [file_sha256(path) for path in retention_files],
        "general_sha256": file_sha256(general_file) if general_file is not None else None,
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
    retention_files: Sequence[Path] = (),
    general_file: Path | None = None,
) -> AlignedModel:
    """M0 for these inputs: loaded from the cache, or trained, merged and cached now.

    ``retention_files`` are benign chat JSONL files; the first
    ``settings.retention_per_file`` examples of each join D_safe in stage 0's training set, and
    the first ``settings.retention_general`` of ``general_file`` (base-model answers to
    everyday prompts) too.
    ``callbacks`` receive the stage-0 trainer's events (progress) when it trains.
    """
    from bds_core.models.assets import build_directory_atomically, is_complete_directory

    root = cache_root if cache_root is not None else default_aligned_cache()
    key = alignment_key(model, safety_file, settings, retention_files, general_file)
    folder = aligned_model_dir(root, key)
    if is_complete_directory(folder):
        return AlignedModel(folder, key, _read_provenance(folder), from_cache=True)

    def build(staging: Path) -> None:
        _train_and_merge(
            model,
            safety_file,
            retention_files,
            settings,
            key,
            staging,
            device,
            callbacks,
            general_file,
        )

    manifest = {"name": "bench-aligned-model", "key": key, "base_model": model}
    build_directory_atomically(folder, build, manifest)
    return AlignedModel(folder, key, _read_provenance(folder), from_cache=False)


def stage0_examples(
    safety_file: Path,
    retention_files: Sequence[Path],
    per_file: int,
    general_file: Path | None = None,
    general: int = 0,
) -> list[Example]:
    """Stage 0's training set: every example of D_safe, then the first ``per_file`` examples
    of each retention file and the first ``general`` of ``general_file`` (the trainer
    shuffles them together)."""
    examples = load_examples(safety_file)
    if per_file > 0:
        for path in retention_files:
            examples += load_examples(path)[:per_file]
    if general > 0 and general_file is not None:
        examples += load_examples(general_file)[:general]
    return examples


def _train_and_merge(
    model: str,
    safety_file: Path,
    retention_files: Sequence[Path],
    settings: AlignmentSettings,
    key: str,
    target: Path,
    device: str | None,
    callbacks: Sequence[TrainerCallback],
    general_file: Path | None = None,
) -> None:
    from bds_core.bench.build import file_sha256
    from bds_core.training import BDSTrainer, TrainConfig

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bds-bench-align-") as work:
        examples = stage0_examples(
            safety_file,
            retention_files,
            settings.retention_per_file,
            general_file,
            settings.retention_general,
        )
        train_file = Path(work) / "stage0.jsonl"
        write_examples(examples, train_file)
        config = TrainConfig(
            model=model,
            train_file=train_file,
            out_dir=Path(work) / "run",
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
        "retention_files": [path.name for path in retention_files],
        "retention_sha256": [file_sha256(path) for path in retention_files],
        "general_retention_file": general_file.name if general_file is not None else None,
        "general_retention_sha256": (
            file_sha256(general_file) if general_file is not None else None
        ),
        "num_safety_examples": len(load_examples(safety_file)),
        "num_train_examples": result.metrics["num_train_examples"],
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
