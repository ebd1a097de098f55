"""Running the baselines: the alignment-stage defences' own M0 variants, and a Lisa fine-tune.

Vaccine, Booster and RepNoise change how the provider aligns the model, so each builds its own
M0 variant: stage 0's recipe (the same base model, D_safe plus retention rows, LoRA, steps,
batch size, learning rate and seed; see `bds_core.bench.alignment`) with the method's
objective in place of plain sft, merged and cached on disk under a key that adds the method,
its settings and the harmful alignment file to stage 0's key. Booster and RepNoise also read
a harmful alignment split (`harmful_alignment_file`), disjoint from the attack's harmful rows
and from every evaluation prompt. The user's fine-tune from such a variant is plain sft.

Lisa works in the fine-tune itself: `run_lisa` fine-tunes M0 on D_ft with the alternating,
proximal schedule of `bds_core.bench.baselines.lisa`.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import torch

from bds_core.bench.alignment import AlignedModel, AlignmentSettings, stage0_examples
from bds_core.bench.baselines.booster import BoosterSettings, booster_step
from bds_core.bench.baselines.common import BatchStream, trainable_parameters
from bds_core.bench.baselines.lisa import (
    LisaResult,
    LisaSettings,
    alignment_steps_for,
    lisa_schedule,
    lisa_train,
)
from bds_core.bench.baselines.repnoise import RepNoiseSettings, repnoise_step
from bds_core.bench.baselines.vaccine import VaccineSettings, vaccine_step
from bds_core.data import Example, load_examples
from bds_core.models.lora import LoraSettings
from bds_core.training.config import TrainConfig

BASELINE_STAGE_VERSION = 1
"""Bump when an M0 variant's recipe changes, so older cached variants are not reused."""

ALIGNMENT_STAGE_METHODS = ("vaccine", "booster", "repnoise")
"""The baselines that build their own M0 variant (then plain sft on D_ft)."""

NEEDS_HARMFUL = ("booster", "repnoise")
"""The alignment-stage baselines that read harmful data at alignment."""

PROVENANCE_FILE = "alignment.json"

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class BaselineSettings:
    """Every baseline's hyperparameters (each the paper's default; see the method modules)."""

    lisa: LisaSettings = field(default_factory=LisaSettings, metadata={"help": "Lisa"})
    vaccine: VaccineSettings = field(default_factory=VaccineSettings, metadata={"help": "Vaccine"})
    booster: BoosterSettings = field(default_factory=BoosterSettings, metadata={"help": "Booster"})
    repnoise: RepNoiseSettings = field(
        default_factory=RepNoiseSettings, metadata={"help": "RepNoise"}
    )

    def for_method(self, method: str) -> dict[str, Any]:
        """The settings of one baseline as a JSON-ready dict (for digests and records)."""
        return dict(asdict(getattr(self, method)))


def _optimizer(params: list[torch.nn.Parameter], learning_rate: float) -> torch.optim.Optimizer:
    # The same AdamW as every benchmark fine-tune (TrainConfig's defaults).
    defaults = TrainConfig.__dataclass_fields__
    weight_decay = float(cast(float, defaults["weight_decay"].default))
    beta1, beta2 = cast(tuple[float, float], defaults["adam_betas"].default)
    return torch.optim.AdamW(
        params, lr=learning_rate, weight_decay=weight_decay, betas=(float(beta1), float(beta2))
    )


def _seed(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def baseline_alignment_key(
    method: str,
    stage0_key: str,
    settings: BaselineSettings,
    harmful_file: Path | None,
) -> str:
    """Cache key of an M0 variant: stage 0's key plus the method, its settings and the harmful
    alignment file's bytes."""
    from bds_core.bench.build import file_sha256

    if method not in ALIGNMENT_STAGE_METHODS:
        raise ValueError(
            f"{method!r} is not an alignment-stage baseline ({', '.join(ALIGNMENT_STAGE_METHODS)})"
        )
    payload = {
        "version": BASELINE_STAGE_VERSION,
        "method": method,
        "stage0_key": stage0_key,
        "settings": settings.for_method(method),
        "harmful_sha256": (
            file_sha256(harmful_file) if method in NEEDS_HARMFUL and harmful_file else None
        ),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def baseline_model_dir(cache_root: Path, method: str, key: str) -> Path:
    """The cache folder of an M0 variant."""
    return cache_root / f"m0-{method}-{key[:24]}"


def align_with_baseline(
    method: str,
    model: Any,
    tokenizer: Any,
    alignment_examples: Sequence[Example],
    harmful_examples: Sequence[Example],
    alignment: AlignmentSettings,
    settings: BaselineSettings,
    device: torch.device | str = "cpu",
    on_step: ProgressFn | None = None,
) -> list[dict[str, float]]:
    """Train ``model``'s LoRA adapter with an alignment-stage baseline's objective, in place,
    for ``alignment.steps`` steps; returns each step's measured losses."""
    if method in NEEDS_HARMFUL and not harmful_examples:
        raise ValueError(f"{method} needs harmful alignment examples, got none")
    _seed(alignment.seed)
    optimizer = _optimizer(trainable_parameters(model), alignment.learning_rate)
    safe = BatchStream(
        alignment_examples,
        tokenizer,
        alignment.batch_size,
        alignment.max_length,
        alignment.seed,
        device,
    )
    harmful = (
        BatchStream(
            harmful_examples,
            tokenizer,
            alignment.batch_size,
            alignment.max_length,
            alignment.seed + 1,
            device,
        )
        if method in NEEDS_HARMFUL
        else None
    )
    generator = torch.Generator().manual_seed(alignment.seed + 2)
    trace: list[dict[str, float]] = []
    model.train()
    for step in range(1, alignment.steps + 1):
        if method == "vaccine":
            trace.append(asdict(vaccine_step(model, safe.next(), optimizer, settings.vaccine)))
        elif method == "booster":
            assert harmful is not None
            trace.append(
                asdict(
                    booster_step(model, safe.next(), harmful.next(), optimizer, settings.booster)
                )
            )
        elif method == "repnoise":
            assert harmful is not None
            trace.append(
                asdict(
                    repnoise_step(
                        model, safe.next(), harmful.next(), optimizer, settings.repnoise, generator
                    )
                )
            )
        else:
            raise ValueError(f"unknown alignment-stage baseline {method!r}")
        if on_step is not None:
            on_step(step, alignment.steps)
    return trace


def ensure_baseline_aligned_model(
    method: str,
    model: str,
    safety_file: Path,
    alignment: AlignmentSettings,
    stage0_key: str,
    cache_root: Path,
    settings: BaselineSettings,
    harmful_file: Path | None = None,
    retention_files: Sequence[Path] = (),
    general_file: Path | None = None,
    device: str | None = None,
    on_step: ProgressFn | None = None,
) -> AlignedModel:
    """The M0 variant of ``method``: from the cache, or trained, merged and cached now."""
    from bds_core.bench.build import file_sha256
    from bds_core.models import load_model
    from bds_core.models.assets import build_directory_atomically, is_complete_directory
    from bds_core.models.lora import apply_lora

    key = baseline_alignment_key(method, stage0_key, settings, harmful_file)
    folder = baseline_model_dir(cache_root, method, key)
    if is_complete_directory(folder):
        return AlignedModel(folder, key, _read_provenance(folder), from_cache=True)
    if method in NEEDS_HARMFUL and harmful_file is None:
        raise ValueError(f"{method} needs a harmful alignment file (harmful_alignment_file)")

    def build(staging: Path) -> None:
        started = time.monotonic()
        loaded = load_model(model, device=device)
        peft_model = apply_lora(loaded.model, alignment.lora)
        peft_model.to(loaded.model.device)
        examples = stage0_examples(
            safety_file,
            retention_files,
            alignment.retention_per_file,
            general_file,
            alignment.retention_general,
        )
        harmful = load_examples(harmful_file) if harmful_file and method in NEEDS_HARMFUL else []
        trace = align_with_baseline(
            method,
            peft_model,
            loaded.tokenizer,
            examples,
            harmful,
            alignment,
            settings,
            peft_model.device,
            on_step,
        )
        merged = peft_model.merge_and_unload()
        merged.save_pretrained(str(staging), safe_serialization=True)
        loaded.tokenizer.save_pretrained(str(staging))
        provenance = {
            "key": key,
            "method": method,
            "version": BASELINE_STAGE_VERSION,
            "stage0_key": stage0_key,
            "base_model": model,
            "settings": alignment.to_dict(),
            "baseline_settings": settings.for_method(method),
            "safety_sha256": file_sha256(safety_file),
            "harmful_file": harmful_file.name if harmful and harmful_file else None,
            "harmful_sha256": file_sha256(harmful_file) if harmful and harmful_file else None,
            "num_alignment_examples": len(examples),
            "num_harmful_examples": len(harmful),
            "steps": alignment.steps,
            "final": trace[-1] if trace else None,
            "seconds": round(time.monotonic() - started, 2),
        }
        (staging / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")

    manifest = {"name": f"bench-aligned-{method}", "key": key, "base_model": model}
    build_directory_atomically(folder, build, manifest)
    return AlignedModel(folder, key, _read_provenance(folder), from_cache=False)


def _read_provenance(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / PROVENANCE_FILE).read_text())
    except (OSError, ValueError) as error:
        raise RuntimeError(
            f"M0 variant {folder} has no readable {PROVENANCE_FILE} ({error}); delete the folder"
        ) from None
    return data if isinstance(data, dict) else {}


@dataclass
class LisaRun:
    """A finished Lisa fine-tune: the model (with its adapter), tokenizer, trace, and seconds
    per user step (the alignment steps' time included)."""

    model: Any
    tokenizer: Any
    result: LisaResult
    seconds_per_step: float


def run_lisa(
    aligned_model: Path | str,
    train_examples: Sequence[Example],
    safety_examples: Sequence[Example],
    lora: LoraSettings,
    learning_rate: float,
    batch_size: int,
    alignment_rows_per_step: int,
    user_steps: int,
    max_length: int,
    seed: int,
    settings: LisaSettings,
    alignment_every: int = 1,
    device: str | None = None,
    on_step: ProgressFn | None = None,
) -> LisaRun:
    """Fine-tune M0 on D_ft with Lisa: ``user_steps`` user steps of ``batch_size`` rows and the
    alignment steps that spend ``alignment_rows_per_step`` alignment rows on every
    ``alignment_every``-th user step (the alignment rows mix and BDS spend)."""
    from bds_core.models import load_model
    from bds_core.models.lora import apply_lora

    _seed(seed)
    loaded = load_model(str(aligned_model), device=device)
    model = apply_lora(loaded.model, lora)
    model.to(loaded.model.device)
    model.train()
    user = BatchStream(train_examples, loaded.tokenizer, batch_size, max_length, seed, model.device)
    safety = BatchStream(
        safety_examples, loaded.tokenizer, batch_size, max_length, seed + 1, model.device
    )
    schedule = lisa_schedule(
        user_steps,
        alignment_steps_for(user_steps, alignment_rows_per_step, batch_size, alignment_every),
        settings.round_user_steps,
    )
    optimizer = _optimizer(trainable_parameters(model), learning_rate)
    started = time.monotonic()
    result = lisa_train(model, user, safety, optimizer, schedule, settings, on_step)
    # Per user step, alignment steps included: comparable with a mix or BDS step, which carries
    # its alignment rows too.
    seconds = (time.monotonic() - started) / max(schedule.count("fine-tuning"), 1)
    model.eval()
    return LisaRun(model, loaded.tokenizer, result, seconds)
