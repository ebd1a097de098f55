"""Atomic, verifiable checkpoints of a training run, and what they hold.

A checkpoint is a folder `step-000123/` written in three moves: every file goes into a
temporary folder, `manifest.json` (sha256 of every other file) is written last, and the folder
is renamed into place. A folder without a manifest, or whose files do not match it, is not a
checkpoint; resume takes the newest one that verifies.

A training checkpoint (`TrainingState`) holds everything a run needs to continue bit-for-bit;
its file names and contents are a stored format that older checkpoints share:

    lora_state.safetensors   the LoRA parameters of every adapter
    scheduler.safetensors    the data scheduler's state (bds only)
    reference.safetensors    the cached reference losses and which are known
    optimizers.pt            optimizer states: model, scheduler, agnostic adapter
    rng.pt                   random states: torch, CUDA, numpy, python, SGLD noise, per rank
    trainer_state.json       step, sampler positions, loss history, elapsed time, fingerprint
    adapter/                 the main adapter as a PEFT directory (for inspection)
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

MANIFEST = "manifest.json"
_PREFIX = "step-"


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def checkpoint_dir_name(step: int) -> str:
    return f"{_PREFIX}{step:07d}"


def begin_checkpoint(root: Path, step: int) -> Path:
    """Create an empty temporary folder for the files of the checkpoint at `step`."""
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".tmp-{checkpoint_dir_name(step)}-{os.getpid()}-{time.monotonic_ns()}"
    staging.mkdir()
    return staging


def commit_checkpoint(staging: Path, step: int) -> Path:
    """Write the manifest last, fsync it, and rename the folder into place."""
    files = sorted(p for p in staging.rglob("*") if p.is_file())
    manifest = {
        "step": step,
        "files": {str(p.relative_to(staging)): file_sha256(p) for p in files},
    }
    manifest_path = staging / MANIFEST
    with manifest_path.open("w") as handle:
        json.dump(manifest, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    final = staging.parent / checkpoint_dir_name(step)
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)
    return final


def verify_checkpoint(path: Path) -> bool:
    """True when the folder has a manifest and every listed file matches its hash."""
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        return False
    try:
        manifest = json.loads(manifest_path.read_text())
        for relative, expected in manifest["files"].items():
            file_path = path / relative
            if not file_path.is_file() or file_sha256(file_path) != expected:
                return False
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return True


def list_checkpoints(root: Path) -> list[Path]:
    """Checkpoint folders under `root`, newest step first (verified or not)."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(_PREFIX)]
    return sorted(found, key=lambda p: int(p.name[len(_PREFIX) :]), reverse=True)


def latest_valid_checkpoint(root: Path) -> Path | None:
    """The newest checkpoint that verifies, or None."""
    for candidate in list_checkpoints(root):
        if verify_checkpoint(candidate):
            return candidate
    return None


def prune_checkpoints(root: Path, keep: int) -> None:
    """Delete all but the `keep` newest checkpoints, and stale temporary folders."""
    for old in list_checkpoints(root)[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    if root.is_dir():
        for staging in root.glob(".tmp-*"):
            shutil.rmtree(staging, ignore_errors=True)


# ------------------------------------------------------------------------- training state
@dataclass
class TrainingState:
    """The contents of a training checkpoint (tensors on the CPU)."""

    lora: dict[str, torch.Tensor]
    scheduler: dict[str, torch.Tensor] | None
    reference_cache: torch.Tensor
    reference_known: torch.Tensor
    optimizers: dict[str, Any]
    rng: dict[str, Any]
    trainer: dict[str, Any]


def lora_state(model: Any) -> dict[str, torch.Tensor]:
    """The LoRA parameters of every adapter of the PEFT `model`, as CPU tensors."""
    return {
        name: p.detach().cpu().contiguous()
        for name, p in model.named_parameters()
        if "lora_" in name
    }


def load_lora_state(model: Any, lora: dict[str, torch.Tensor]) -> None:
    """Copy `lora` (from `lora_state`) into the PEFT `model`'s parameters, in place."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in lora.items():
            params[name].copy_(value.to(params[name].device))


def write_training_checkpoint(
    root: Path, step: int, state: TrainingState, save_adapter: Callable[[Path], None]
) -> Path:
    """Write `state` as the checkpoint of `step` under `root`, atomically; return its folder.

    `save_adapter` writes the main adapter into the folder it is given.
    """
    staging = begin_checkpoint(root, step)
    save_file(state.lora, str(staging / "lora_state.safetensors"))
    if state.scheduler is not None:
        save_file(state.scheduler, str(staging / "scheduler.safetensors"))
    save_file(
        {
            "reference_cache": state.reference_cache,
            "reference_known": state.reference_known.to(torch.uint8),
        },
        str(staging / "reference.safetensors"),
    )
    torch.save(state.optimizers, staging / "optimizers.pt")
    torch.save(state.rng, staging / "rng.pt")
    (staging / "trainer_state.json").write_text(json.dumps(state.trainer))
    save_adapter(staging / "adapter")
    return commit_checkpoint(staging, step)


def read_training_checkpoint(
    path: Path, fingerprint: str, map_location: torch.device
) -> TrainingState:
    """The state in the checkpoint folder `path`; ValueError when another run wrote it.

    `fingerprint` is the reading run's `TrainConfig.resume_fingerprint`; optimizer states
    are loaded onto `map_location`.
    """
    trainer = json.loads((path / "trainer_state.json").read_text())
    if trainer["fingerprint"] != fingerprint:
        raise ValueError(
            f"checkpoint {path} was written by a run with other settings or data; "
            "use a fresh out_dir or the original configuration"
        )
    scheduler_file = path / "scheduler.safetensors"
    reference = load_file(str(path / "reference.safetensors"))
    return TrainingState(
        lora=load_file(str(path / "lora_state.safetensors")),
        scheduler=load_file(str(scheduler_file)) if scheduler_file.is_file() else None,
        reference_cache=reference["reference_cache"],
        reference_known=reference["reference_known"].bool(),
        optimizers=torch.load(path / "optimizers.pt", weights_only=True, map_location=map_location),
        rng=torch.load(path / "rng.pt", weights_only=True),
        trainer=trainer,
    )


def data_digest(paths: Iterable[Path | None]) -> str:
    """sha256 over the bytes of the data files `paths` (None skipped), in order."""
    digest = hashlib.sha256()
    for path in paths:
        if path is not None:
            digest.update(path.read_bytes())
    return digest.hexdigest()


# ------------------------------------------------------------------------- random state
def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def rank_seed(seed: int, rank: int, step: int) -> int:
    """Seed of a non-zero rank's own random stream (dropout), distinct per rank and step."""
    return (seed * 1_000_003 + rank * 7_919 + step * 104_729) % (2**63 - 1)


def rank_rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """This process's own random streams (dropout): torch's, and CUDA's on a GPU."""
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def capture_rng_state(
    device: torch.device,
    noise_generator: torch.Generator,
    rank_streams: list[dict[str, torch.Tensor]] | None = None,
) -> dict[str, Any]:
    """The contents of `rng.pt`: this process's generators, the sampler's noise generator and,
    data-parallel, every rank's own streams (`rank_rng_state`, gathered)."""
    numpy_state: tuple[Any, ...] = tuple(np.random.get_state(legacy=True))
    rng: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "noise": noise_generator.get_state(),
        "numpy": torch.from_numpy(numpy_state[1].astype(np.int64)),
        "numpy_pos": int(numpy_state[2]),
        "numpy_gauss": [int(numpy_state[3]), float(numpy_state[4])],
        "python": json.dumps(random.getstate()),
    }
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    if rank_streams is not None:
        rng["ranks"] = rank_streams
    return rng


def restore_rng_state(
    rng: dict[str, Any],
    noise_generator: torch.Generator,
    device: torch.device,
    *,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    step: int = 0,
) -> None:
    """Continue every generator from `rng` (what `capture_rng_state` returned).

    Rank 0 continues the stream saved as the run's own. Another rank continues its saved
    stream when the checkpoint was written by as many ranks as there are now; otherwise
    (another world size) it starts a fresh stream derived from (`seed`, rank, `step`). Only
    dropout draws from these streams, so without LoRA dropout a resume on another number
    of ranks continues exactly as the original run would have.
    """
    _restore_rank_stream(rng, device, rank, world_size, rank_seed(seed, rank, step))
    noise_generator.set_state(rng["noise"])
    has_gauss, cached_gauss = rng["numpy_gauss"]
    np.random.set_state(
        (
            "MT19937",
            rng["numpy"].numpy().astype(np.uint32),
            rng["numpy_pos"],
            has_gauss,
            cached_gauss,
        )
    )
    python_state = json.loads(rng["python"])
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))


def _restore_rank_stream(
    rng: dict[str, Any], device: torch.device, rank: int, world_size: int, fresh_seed: int
) -> None:
    """This rank's torch (and CUDA) stream from `rng` (see `restore_rng_state`)."""
    saved = rng.get("ranks")
    if rank == 0:
        state: dict[str, Any] = {"torch": rng["torch"], "cuda": rng.get("cuda")}
    elif saved is not None and len(saved) == world_size:
        state = dict(saved[rank])
    else:
        torch.manual_seed(fresh_seed)
        return
    torch.set_rng_state(state["torch"])
    cuda_state = state.get("cuda")
    if cuda_state is not None and device.type == "cuda":
        if isinstance(cuda_state, list | tuple):
            # Checkpoints of earlier versions hold the states of every visible GPU.
            index = device.index or 0
            cuda_state = cuda_state[index] if index < len(cuda_state) else None
        if cuda_state is not None:
            torch.cuda.set_rng_state(cuda_state, device)
