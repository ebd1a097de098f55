"""The BDS trainer: LoRA fine-tuning with per-example weights inferred by a data scheduler.

One loop serves three methods (bds-method.md, "The algorithm"):
- `sft`: customer data only, every weight 1 (no defence).
- `mix`: customer data plus an alignment batch each step, every weight 1.
- `bds`: customer data weighted by the scheduler plus an alignment batch; after each model
  step the scheduler takes a step on L_a = mean w_i (l_i - r_i).

Shape of the recipe: `setup`, `train`, `save_checkpoint`, `load_checkpoint`.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import resource
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from bds_core.data import Example, collate, encode_example, load_examples
from bds_core.data.tokenize import EncodedExample
from bds_core.models import apply_lora, load_model, pick_device
from bds_core.schedulers import DataScheduler, SchedulerContext, build_scheduler
from bds_core.training.callbacks import ProgressEvent, TrainerCallback
from bds_core.training.checkpoint import (
    begin_checkpoint,
    commit_checkpoint,
    latest_valid_checkpoint,
    prune_checkpoints,
)
from bds_core.training.config import TrainConfig
from bds_core.training.losses import (
    per_example_loss,
    per_example_loss_from_hidden,
    weighted_loss_sum,
)
from bds_core.training.sampling import EpochSampler

AGNOSTIC_ADAPTER = "agnostic"
MAIN_ADAPTER = "default"


@dataclass
class TrainResult:
    """What a run produced."""

    out_dir: Path
    adapter_dir: Path | None
    weights_file: Path | None
    metrics_file: Path | None
    metrics: dict[str, Any]
    steps: int
    cancelled: bool = False
    resumed_from_step: int | None = None


@dataclass
class _StepLosses:
    total: float
    task: float
    safety: float | None
    train_losses: torch.Tensor
    weights: torch.Tensor


def weight_statistics(
    weights: torch.Tensor, harmful_labels: Sequence[bool | None] | None = None
) -> dict[str, float]:
    """Summary of a weight vector: spread, collapse indicators and, if labels exist, AUROC.

    `ess_ratio` is the effective sample size (sum w)^2 / sum w^2 over N (1 = uniform);
    `entropy_ratio` is the entropy of w / sum w over log N. Labels are only ever used here,
    for evaluation, never for training.
    """
    values = weights.detach().double().cpu()
    n = values.numel()
    total = values.sum().clamp_min(1e-12)
    probs = (values / total).clamp_min(0)
    entropy = -(probs[probs > 0] * probs[probs > 0].log()).sum().item()
    stats = {
        "mean": values.mean().item(),
        "std": values.std(unbiased=False).item(),
        "min": values.min().item(),
        "max": values.max().item(),
        "ess_ratio": (total**2 / values.pow(2).sum().clamp_min(1e-12)).item() / n,
        "entropy_ratio": entropy / math.log(n) if n > 1 else 1.0,
        "share_below_half": (values < 0.5).double().mean().item(),
    }
    if harmful_labels is not None:
        known = [
            (float(w), bool(lab))
            for w, lab in zip(values.tolist(), harmful_labels, strict=True)
            if lab is not None
        ]
        labels = [lab for _, lab in known]
        if labels and any(labels) and not all(labels):
            from bds_core.eval import auroc

            # Low weight means harmful, so the harmfulness score is the negated weight.
            stats["auroc"] = auroc([-w for w, _ in known], labels)
            harmful = [w for w, lab in known if lab]
            benign = [w for w, lab in known if not lab]
            stats["mean_weight_harmful"] = float(np.mean(harmful))
            stats["mean_weight_benign"] = float(np.mean(benign))
            benign_tensor = torch.tensor(benign, dtype=torch.float64)
            stats["benign_ess_ratio"] = (
                benign_tensor.sum() ** 2 / benign_tensor.pow(2).sum().clamp_min(1e-12)
            ).item() / len(benign)
    return stats


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _digest_files(paths: Iterable[Path | None]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        if path is not None:
            digest.update(path.read_bytes())
    return digest.hexdigest()


class BDSTrainer:
    """Recipe: `setup()`, then `train()`; checkpoints via `save_checkpoint`/`load_checkpoint`."""

    def __init__(
        self,
        config: TrainConfig,
        callbacks: Sequence[TrainerCallback] = (),
        should_cancel: Callable[[], bool] | None = None,
    ) -> None:
        self.config = config
        self.callbacks = list(callbacks)
        self.should_cancel = should_cancel or (lambda: False)
        self.step = 0
        self.history: list[dict[str, float | None]] = []
        self.elapsed_before_resume = 0.0
        self.resumed_from_step: int | None = None
        self.scheduler: DataScheduler | None = None

    # ----------------------------------------------------------------------------- setup
    def setup(self) -> None:
        """Load model and data, attach adapters, build the scheduler and the optimizers."""
        config = self.config
        self._seed_everything(config.seed)
        self.device = torch.device(config.device) if config.device else pick_device()

        self.all_train_examples: list[Example] = load_examples(config.train_file)
        self.train_examples = self.all_train_examples
        self.dropped_ids: set[str] = set()
        if config.method == "filter":
            from bds_core.scoring import filter_examples

            # The `filter` baseline: the pretrained amortized scheduler drops what it flags.
            self.train_examples, dropped = filter_examples(
                self.all_train_examples, config.scheduler.init_path
            )
            self.dropped_ids = {example.id for example in dropped}
            if not self.train_examples:
                raise ValueError(f"the filter dropped every example of {config.train_file}")
        self.safety_examples: list[Example] = (
            load_examples(config.safety_file)
            if config.uses_safety_data and config.safety_file is not None
            else []
        )
        loaded = load_model(config.model, device=self.device)
        self.tokenizer = loaded.tokenizer
        self.pad_token_id = int(self.tokenizer.pad_token_id)
        self.model = apply_lora(loaded.model, config.lora)
        self.model.to(self.device)
        # The decoder stack (with the LoRA layers injected) and the vocabulary projection, so
        # only answer positions are projected to the vocabulary (per_example_loss_from_hidden).
        causal_lm: Any = self.model.get_base_model()
        self.decoder: Any = causal_lm.get_decoder() if hasattr(causal_lm, "get_decoder") else None
        self.output_head: Any = causal_lm.get_output_embeddings()

        self.train_encoded = self._encode(self.train_examples)
        self.safety_encoded = self._encode(self.safety_examples)
        self.total_steps = config.total_steps(len(self.train_examples), len(self.safety_examples))

        self.uses_agnostic = config.method == "bds" and config.scheduler.reference == "agnostic"
        if self.uses_agnostic:
            self.model.add_adapter(AGNOSTIC_ADAPTER, self.model.peft_config[MAIN_ADAPTER])
            self.model.set_adapter(MAIN_ADAPTER)
        self.adapter_params = {
            name: self._adapter_parameters(name)
            for name in ([MAIN_ADAPTER, AGNOSTIC_ADAPTER] if self.uses_agnostic else [MAIN_ADAPTER])
        }
        self.optimizer = self._make_model_optimizer(self.adapter_params[MAIN_ADAPTER])
        self.agnostic_optimizer = (
            self._make_model_optimizer(self.adapter_params[AGNOSTIC_ADAPTER])
            if self.uses_agnostic
            else None
        )

        self.train_sampler = EpochSampler(len(self.train_examples), config.batch_size, config.seed)
        self.safety_sampler = (
            EpochSampler(
                len(self.safety_examples), config.effective_safety_batch_size, config.seed + 1
            )
            if self.safety_examples
            else None
        )

        self.scheduler = None
        self.scheduler_optimizer: torch.optim.Optimizer | None = None
        if config.method == "bds":
            context = SchedulerContext(
                num_examples=len(self.train_examples),
                examples=self.train_examples,
                model=self.model,
                tokenizer=self.tokenizer,
                device=self.device,
                seed=config.seed,
            )
            self.scheduler = build_scheduler(config.scheduler, context).to(self.device)
            self.scheduler_optimizer = torch.optim.AdamW(
                [p for p in self.scheduler.parameters() if p.requires_grad],
                lr=config.scheduler.learning_rate,
                weight_decay=config.scheduler.weight_decay,
            )
        self.noise_generator = torch.Generator().manual_seed(config.seed + 2)
        n = len(self.train_examples)
        self.reference_cache = torch.zeros(n)
        self.reference_known = torch.zeros(n, dtype=torch.bool)
        self.data_digest = _digest_files([config.train_file, config.safety_file])
        self.fingerprint = config.resume_fingerprint(self.data_digest)

    def _encode(self, examples: Sequence[Example]) -> list[EncodedExample]:
        return [encode_example(ex, self.tokenizer, self.config.max_length) for ex in examples]

    def _adapter_parameters(self, adapter: str) -> list[torch.nn.Parameter]:
        marker = f".{adapter}."
        params = [
            p for name, p in self.model.named_parameters() if "lora_" in name and marker in name
        ]
        for param in params:
            param.requires_grad_(True)
        if not params:
            raise RuntimeError(f"no LoRA parameters found for adapter {adapter!r}")
        return params

    def _make_model_optimizer(self, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        config = self.config
        return torch.optim.AdamW(
            params,
            lr=config.learning_rate,
            weight_decay=config.weight_decay,
            betas=config.adam_betas,
        )

    @staticmethod
    def _seed_everything(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed % (2**32))
        torch.manual_seed(seed)

    # ----------------------------------------------------------------------------- losses
    def _losses(
        self, train_indices: torch.Tensor, safety_indices: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-example losses of one micro-batch (customer and alignment rows in one forward)."""
        encoded = [self.train_encoded[i] for i in train_indices.tolist()]
        n_train = len(encoded)
        if safety_indices is not None:
            encoded += [self.safety_encoded[i] for i in safety_indices.tolist()]
        batch = {k: v.to(self.device) for k, v in collate(encoded, self.pad_token_id).items()}
        if self.decoder is not None and self.output_head is not None:
            hidden = self.decoder(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).last_hidden_state
            losses = per_example_loss_from_hidden(hidden, batch["labels"], self.output_head)
        else:
            logits = self.model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits
            losses = per_example_loss(logits, batch["labels"])
        return losses[:n_train], (losses[n_train:] if safety_indices is not None else None)

    @torch.no_grad()
    def _train_losses_no_grad(self, indices: torch.Tensor) -> torch.Tensor:
        chunks = torch.chunk(indices, self.config.gradient_accumulation_steps)
        return torch.cat([self._losses(chunk, None)[0].detach() for chunk in chunks])

    def _reference_losses(self, indices: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        reference = self.config.scheduler.reference
        if reference == "none":
            return torch.zeros(len(indices), device=self.device)
        if reference == "initial":
            missing = indices[~self.reference_known[indices]]
            if len(missing) > 0:
                # The starting model is the base model with the adapters switched off.
                with self.model.disable_adapter():
                    values = self._train_losses_no_grad(missing).cpu()
                self.reference_cache[missing] = values
                self.reference_known[missing] = True
            return self.reference_cache[indices].to(self.device)
        return self._agnostic_step(indices, weights)

    def _agnostic_step(self, indices: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Train the safety-agnostic adapter on weighted customer data; return its losses."""
        assert self.agnostic_optimizer is not None
        self.model.set_adapter(AGNOSTIC_ADAPTER)
        self._adapter_parameters(AGNOSTIC_ADAPTER)
        try:
            self.agnostic_optimizer.zero_grad(set_to_none=True)
            collected = []
            ga = self.config.gradient_accumulation_steps
            for chunk_idx, chunk_w in zip(
                torch.chunk(indices, ga), torch.chunk(weights, ga), strict=True
            ):
                losses, _ = self._losses(chunk_idx, None)
                weighted_loss_sum(losses, chunk_w, len(indices)).backward()
                collected.append(losses.detach())
            torch.nn.utils.clip_grad_norm_(
                self.adapter_params[AGNOSTIC_ADAPTER], self.config.grad_clip
            )
            self.agnostic_optimizer.step()
            if self.config.scheduler.loss_timing == "after":
                return self._train_losses_no_grad(indices)
            return torch.cat(collected)
        finally:
            self.model.set_adapter(MAIN_ADAPTER)
            self._adapter_parameters(MAIN_ADAPTER)

    # ----------------------------------------------------------------------------- one step
    def _train_step(self) -> _StepLosses:
        config = self.config
        train_indices = self.train_sampler.next_batch()
        safety_indices = self.safety_sampler.next_batch() if self.safety_sampler else None
        if self.scheduler is not None:
            with torch.no_grad():
                weights = self.scheduler.batch_weights(train_indices.to(self.device)).detach()
        else:
            weights = torch.ones(len(train_indices), device=self.device)

        # Model step: L = mean_{B_s} l_j + mean_{B_f} w_i l_i, normalised over the whole step.
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        ga = config.gradient_accumulation_steps
        train_chunks = torch.chunk(train_indices, ga)
        weight_chunks = torch.chunk(weights, ga)
        safety_chunks = (
            torch.chunk(safety_indices, ga) if safety_indices is not None else [None] * ga
        )
        task_sum, safety_sum = 0.0, 0.0
        collected: list[torch.Tensor] = []
        for t_idx, w_chunk, s_idx in zip(train_chunks, weight_chunks, safety_chunks, strict=True):
            train_losses, safety_losses = self._losses(t_idx, s_idx)
            loss = weighted_loss_sum(train_losses, w_chunk, len(train_indices))
            if safety_losses is not None and safety_indices is not None:
                loss = loss + safety_losses.sum() / len(safety_indices)
                safety_sum += safety_losses.detach().sum().item()
            loss.backward()
            task_sum += (w_chunk * train_losses.detach()).sum().item()
            collected.append(train_losses.detach())
        torch.nn.utils.clip_grad_norm_(self.adapter_params[MAIN_ADAPTER], config.grad_clip)
        self.optimizer.step()
        train_losses_before = torch.cat(collected)

        if self.scheduler is not None:
            self._scheduler_step(train_indices, train_losses_before, weights)

        task = task_sum / len(train_indices)
        safety = safety_sum / len(safety_indices) if safety_indices is not None else None
        return _StepLosses(
            total=task + (safety or 0.0),
            task=task,
            safety=safety,
            train_losses=train_losses_before,
            weights=weights,
        )

    def _scheduler_step(
        self, indices: torch.Tensor, losses_before: torch.Tensor, weights: torch.Tensor
    ) -> None:
        assert self.scheduler is not None and self.scheduler_optimizer is not None
        settings = self.config.scheduler
        indices = indices.to(self.device)
        if settings.loss_timing == "after":
            losses = self._train_losses_no_grad(indices)
        else:
            losses = losses_before
        reference = self._reference_losses(indices, weights)
        self.scheduler_optimizer.zero_grad(set_to_none=True)
        loss = self.scheduler.scheduler_loss(indices, losses, reference)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.scheduler.parameters(), settings.grad_clip)
        self.scheduler_optimizer.step()
        if settings.sgld:
            self.scheduler.add_langevin_noise(settings.learning_rate, self.noise_generator)
        self.scheduler.after_update()

    # ----------------------------------------------------------------------------- train
    def train(self) -> TrainResult:
        """Run (or continue) the training loop until the last step or a cancellation."""
        config = self.config
        checkpoint_root = config.out_dir / "checkpoints"
        latest = latest_valid_checkpoint(checkpoint_root)
        if latest is not None:
            self.load_checkpoint(latest)
            for callback in self.callbacks:
                callback.on_resume(self.step, latest)
        info = {
            "method": config.method,
            "model": config.model,
            "num_train_examples": len(self.train_examples),
            "num_safety_examples": len(self.safety_examples),
            "total_steps": self.total_steps,
            "start_step": self.step,
            "device": str(self.device),
        }
        for callback in self.callbacks:
            callback.on_start(info)

        started = time.monotonic()
        first_step = self.step
        cancelled = False
        while self.step < self.total_steps:
            if self.should_cancel():
                cancelled = True
                break
            losses = self._train_step()
            self.step += 1
            elapsed = self.elapsed_before_resume + time.monotonic() - started
            per_step = (time.monotonic() - started) / max(self.step - first_step, 1)
            stats = weight_statistics(self.current_weights())
            record = {
                "step": self.step,
                "loss": losses.total,
                "task_loss": losses.task,
                "safety_loss": losses.safety,
            }
            self.history.append(record)
            event = ProgressEvent(
                step=self.step,
                total_steps=self.total_steps,
                loss=losses.total,
                task_loss=losses.task,
                safety_loss=losses.safety,
                elapsed_s=elapsed,
                eta_s=per_step * (self.total_steps - self.step),
                seconds_per_step=per_step,
                weight_stats=stats,
            )
            for callback in self.callbacks:
                callback.on_step(event)
            if (
                config.checkpoint_every
                and self.step % config.checkpoint_every == 0
                and self.step < self.total_steps
            ):
                self._checkpoint_and_notify(checkpoint_root)

        self.elapsed_before_resume += time.monotonic() - started
        steps_this_run = self.step - first_step
        seconds_per_step = (time.monotonic() - started) / steps_this_run if steps_this_run else 0.0
        if cancelled:
            self._checkpoint_and_notify(checkpoint_root)
            result = TrainResult(
                out_dir=config.out_dir,
                adapter_dir=None,
                weights_file=None,
                metrics_file=None,
                metrics={"steps": self.step, "cancelled": True},
                steps=self.step,
                cancelled=True,
                resumed_from_step=self.resumed_from_step,
            )
        else:
            result = self._write_outputs(seconds_per_step)
        for callback in self.callbacks:
            callback.on_end(result)
        return result

    def _checkpoint_and_notify(self, root: Path) -> None:
        path = self.save_checkpoint(root)
        prune_checkpoints(root, self.config.keep_checkpoints)
        for callback in self.callbacks:
            callback.on_checkpoint(self.step, path)

    def current_weights(self) -> torch.Tensor:
        """Current weight of every customer example (1 for sft and mix)."""
        if self.scheduler is None:
            return torch.ones(len(self.train_examples))
        return self.scheduler.all_weights().cpu()

    # ----------------------------------------------------------------------------- outputs
    def _write_outputs(self, seconds_per_step: float) -> TrainResult:
        config = self.config
        out = config.out_dir
        out.mkdir(parents=True, exist_ok=True)
        adapter_dir = out / "adapter"
        self.model.save_pretrained(
            str(adapter_dir), selected_adapters=[MAIN_ADAPTER], safe_serialization=True
        )
        (adapter_dir / "bds_adapter.json").write_text(
            json.dumps({"base_model": config.model, "method": config.method}, indent=2)
        )

        final = self.current_weights()
        if self.scheduler is not None:
            mean, std = self.scheduler.weight_summary()
            mean, std = mean.cpu(), std.cpu()
        elif self.dropped_ids:
            # Report every uploaded example: the ones the filter dropped have weight 0.
            final = torch.tensor(
                [0.0 if ex.id in self.dropped_ids else 1.0 for ex in self.all_train_examples]
            )
            mean, std = final, torch.zeros_like(final)
        else:
            mean, std = final, torch.zeros_like(final)
        reported = self.all_train_examples if self.dropped_ids else self.train_examples
        weights_file = out / "weights.jsonl"
        with weights_file.open("w") as handle:
            for index, example in enumerate(reported):
                row: dict[str, Any] = {
                    "index": index,
                    "id": example.id,
                    "line": example.line,
                    "weight": round(float(final[index]), 6),
                    "weight_mean": round(float(mean[index]), 6),
                    "weight_std": round(float(std[index]), 6),
                }
                handle.write(json.dumps(row) + "\n")

        labels = [ex.is_harmful for ex in reported]
        metrics: dict[str, Any] = {
            "method": config.method,
            "model": config.model,
            "steps": self.step,
            "total_steps": self.total_steps,
            "num_train_examples": len(self.train_examples),
            "num_safety_examples": len(self.safety_examples),
            "num_dropped_examples": len(self.dropped_ids),
            "seconds_per_step": seconds_per_step,
            "elapsed_s": self.elapsed_before_resume,
            "peak_rss_mb": peak_rss_mb(),
            "final_loss": self.history[-1]["loss"] if self.history else None,
            "weight_stats": weight_statistics(
                final, labels if any(x is not None for x in labels) else None
            ),
            "history": self.history,
            "resumed_from_step": self.resumed_from_step,
            "config": config.to_dict(),
        }
        if self.device.type == "cuda":
            metrics["peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        metrics_file = out / "metrics.json"
        metrics_file.write_text(json.dumps(metrics, indent=2, default=str))
        return TrainResult(
            out_dir=out,
            adapter_dir=adapter_dir,
            weights_file=weights_file,
            metrics_file=metrics_file,
            metrics=metrics,
            steps=self.step,
            resumed_from_step=self.resumed_from_step,
        )

    # ----------------------------------------------------------------------------- checkpoints
    def _lora_state(self) -> dict[str, torch.Tensor]:
        return {
            name: p.detach().cpu().contiguous()
            for name, p in self.model.named_parameters()
            if "lora_" in name
        }

    def save_checkpoint(self, root: Path) -> Path:
        """Write everything needed to continue bit-for-bit, atomically."""
        staging = begin_checkpoint(root, self.step)
        save_file(self._lora_state(), str(staging / "lora_state.safetensors"))
        if self.scheduler is not None:
            scheduler_state = {
                k: v.detach().cpu().contiguous() for k, v in self.scheduler.state_dict().items()
            }
            save_file(scheduler_state, str(staging / "scheduler.safetensors"))
        save_file(
            {
                "reference_cache": self.reference_cache,
                "reference_known": self.reference_known.to(torch.uint8),
            },
            str(staging / "reference.safetensors"),
        )
        optimizers: dict[str, Any] = {"model": self.optimizer.state_dict()}
        if self.scheduler_optimizer is not None:
            optimizers["scheduler"] = self.scheduler_optimizer.state_dict()
        if self.agnostic_optimizer is not None:
            optimizers["agnostic"] = self.agnostic_optimizer.state_dict()
        torch.save(optimizers, staging / "optimizers.pt")
        numpy_state: tuple[Any, ...] = tuple(np.random.get_state(legacy=True))
        rng: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "noise": self.noise_generator.get_state(),
            "numpy": torch.from_numpy(numpy_state[1].astype(np.int64)),
            "numpy_pos": int(numpy_state[2]),
            "numpy_gauss": [int(numpy_state[3]), float(numpy_state[4])],
            "python": json.dumps(random.getstate()),
        }
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(rng, staging / "rng.pt")
        state = {
            "step": self.step,
            "total_steps": self.total_steps,
            "train_sampler": self.train_sampler.state_dict(),
            "safety_sampler": self.safety_sampler.state_dict() if self.safety_sampler else None,
            "history": self.history,
            "elapsed_s": self.elapsed_before_resume,
            "fingerprint": self.fingerprint,
        }
        (staging / "trainer_state.json").write_text(json.dumps(state))
        self.model.save_pretrained(
            str(staging / "adapter"), selected_adapters=[MAIN_ADAPTER], safe_serialization=True
        )
        return commit_checkpoint(staging, self.step)

    def load_checkpoint(self, path: Path) -> None:
        """Restore a checkpoint written by `save_checkpoint` of an identically configured run."""
        state = json.loads((path / "trainer_state.json").read_text())
        if state["fingerprint"] != self.fingerprint:
            raise ValueError(
                f"checkpoint {path} was written by a run with other settings or data; "
                "use a fresh out_dir or the original configuration"
            )
        lora_state = load_file(str(path / "lora_state.safetensors"))
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, value in lora_state.items():
                params[name].copy_(value.to(params[name].device))
        if self.scheduler is not None:
            scheduler_state = load_file(str(path / "scheduler.safetensors"))
            self.scheduler.load_state_dict(
                {k: v.to(self.device) for k, v in scheduler_state.items()}
            )
        reference = load_file(str(path / "reference.safetensors"))
        self.reference_cache = reference["reference_cache"]
        self.reference_known = reference["reference_known"].bool()
        optimizers = torch.load(path / "optimizers.pt", weights_only=True, map_location=self.device)
        self.optimizer.load_state_dict(optimizers["model"])
        if self.scheduler_optimizer is not None:
            self.scheduler_optimizer.load_state_dict(optimizers["scheduler"])
        if self.agnostic_optimizer is not None:
            self.agnostic_optimizer.load_state_dict(optimizers["agnostic"])
        rng = torch.load(path / "rng.pt", weights_only=True)
        torch.set_rng_state(rng["torch"])
        self.noise_generator.set_state(rng["noise"])
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
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.train_sampler.load_state_dict(state["train_sampler"])
        if self.safety_sampler is not None and state["safety_sampler"] is not None:
            self.safety_sampler.load_state_dict(state["safety_sampler"])
        self.step = int(state["step"])
        self.history = list(state["history"])
        self.elapsed_before_resume = float(state["elapsed_s"])
        self.resumed_from_step = self.step


def train(
    config: TrainConfig,
    callbacks: Sequence[TrainerCallback] = (),
    should_cancel: Callable[[], bool] | None = None,
    resume: bool = True,
) -> TrainResult:
    """Set up and run a training job; continues from the newest valid checkpoint if `resume`."""
    if not resume:
        import shutil

        shutil.rmtree(config.out_dir / "checkpoints", ignore_errors=True)
    trainer = BDSTrainer(config, callbacks=callbacks, should_cancel=should_cancel)
    trainer.setup()
    return trainer.train()


__all__ = ["BDSTrainer", "TrainResult", "peak_rss_mb", "train", "weight_statistics"]
