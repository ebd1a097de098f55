"""The BDS trainer: LoRA fine-tuning with per-example weights inferred by a data scheduler.

One loop serves three methods (bds-method.md, "The algorithm"):
- `sft`: customer data only, every weight 1 (no defence).
- `mix`: customer data plus an alignment batch each step, every weight 1.
- `bds`: customer data weighted by the scheduler plus an alignment batch; after each model
  step the scheduler takes a step on L_a = mean w_i (l_i - r_i).

Shape of the recipe: `setup`, `train`, `save_checkpoint`, `load_checkpoint`. The class keeps
the orchestration; what `setup` builds comes from `training/setup.py`, the forward passes from
`training/forward.py`, the checkpoint format from `training/checkpoint.py` and what a finished
run writes from `training/outputs.py`.

The same loop runs data-parallel when launched by torchrun (or inside an initialised process
group): every process draws the same global batch, trains on its slice, and gradients are
summed across processes (`bds_core.training.distributed`); rank 0 writes checkpoints and
outputs and reports progress.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bds_core.eval.weights import weight_statistics
from bds_core.schedulers import BatchShard, DataScheduler, SchedulerContext
from bds_core.training.callbacks import ProgressEvent, TrainerCallback
from bds_core.training.checkpoint import (
    TrainingState,
    capture_rng_state,
    data_digest,
    latest_valid_checkpoint,
    load_lora_state,
    lora_state,
    prune_checkpoints,
    rank_rng_state,
    rank_seed,
    read_training_checkpoint,
    restore_rng_state,
    seed_everything,
    write_training_checkpoint,
)
from bds_core.training.config import TrainConfig
from bds_core.training.distributed import DataParallel, init_data_parallel
from bds_core.training.forward import RowLosses, adapter_parameters
from bds_core.training.outputs import (
    MAIN_ADAPTER,
    TrainResult,
    cancelled_result,
    save_adapter,
    write_outputs,
)
from bds_core.training.reference import AGNOSTIC_ADAPTER, ReferenceLosses, model_is_reference
from bds_core.training.setup import (
    ExampleSelection,
    adapter_optimizer,
    autocast_dtype,
    encode_examples,
    load_training_data,
    setup_model,
    setup_samplers,
    setup_scheduler,
    uses_agnostic_adapter,
)


@dataclass
class _StepLosses:
    total: float
    task: float
    safety: float | None
    tokens: int


class BDSTrainer:
    """Recipe: `setup()`, then `train()`; checkpoints via `save_checkpoint`/`load_checkpoint`."""

    def __init__(
        self,
        config: TrainConfig,
        callbacks: Sequence[TrainerCallback] = (),
        should_cancel: Callable[[], bool] | None = None,
        select_examples: ExampleSelection | None = None,
    ) -> None:
        """`select_examples` picks the customer examples to train on (default: all of them);
        the rest are reported with weight 0. Method `filter` needs one: the benchmark's
        `bds_core.bench.filter.drop_flagged`."""
        if config.method == "filter" and select_examples is None:
            raise ValueError(
                "method 'filter' trains on the examples a pretrained scheduler leaves "
                "unflagged; pass select_examples=bds_core.bench.filter.drop_flagged(config)"
            )
        self.config = config
        self.select_examples = select_examples
        self.callbacks = list(callbacks)
        self.should_cancel = should_cancel or (lambda: False)
        self.step = 0
        self.history: list[dict[str, float | None]] = []
        self.elapsed_before_resume = 0.0
        self.resumed_from_step: int | None = None
        self.scheduler: DataScheduler | None = None
        self.parallel = DataParallel()
        # Wall seconds spent in each phase of the steps run so far (`bds bench speed`).
        self.phase_seconds: dict[str, float] = {}

    # ----------------------------------------------------------------------------- setup
    def setup(self) -> None:
        """Load model and data, attach adapters, build the scheduler and the optimizers.

        Under torchrun (or in an initialised process group) this also joins the data-parallel
        run: every process builds identical replicas from the same seed, and rank 0's values
        are broadcast once more so that no source of nondeterminism can split them.
        """
        config = self.config
        self.parallel, self.device = init_data_parallel(config.device)
        seed_everything(config.seed)
        self.data = load_training_data(config, self.parallel, self.select_examples)
        train_examples, safety_examples = self.data.train_examples, self.data.safety_examples
        config.check_split(self.parallel.world_size)
        self.model, self.tokenizer = setup_model(config, self.parallel, self.device)
        self.train_encoded = encode_examples(train_examples, self.tokenizer, config)
        self.safety_encoded = encode_examples(safety_examples, self.tokenizer, config)
        self.row_losses = RowLosses(
            self.model,
            self.train_encoded,
            self.safety_encoded,
            int(self.tokenizer.pad_token_id),
            config,
            self.device,
            autocast_dtype(config.precision, self.device),
        )
        self.total_steps = config.total_steps(len(train_examples), len(safety_examples))

        adapters = [MAIN_ADAPTER] + ([AGNOSTIC_ADAPTER] if uses_agnostic_adapter(config) else [])
        self.adapter_params = {name: adapter_parameters(self.model, name) for name in adapters}
        self.optimizer = adapter_optimizer(config, self.adapter_params[MAIN_ADAPTER])
        self.agnostic_optimizer = (
            adapter_optimizer(config, self.adapter_params[AGNOSTIC_ADAPTER])
            if AGNOSTIC_ADAPTER in self.adapter_params
            else None
        )
        self.train_sampler, self.safety_sampler = setup_samplers(
            config, len(train_examples), len(safety_examples), self.parallel.world_size
        )
        # The sampler's noise (pSGLD): seeded alike on every rank, so every rank draws the same.
        self.noise_generator = torch.Generator().manual_seed(config.seed + 2)
        context = SchedulerContext(
            num_examples=len(train_examples),
            examples=train_examples,
            model=self.model,
            tokenizer=self.tokenizer,
            device=self.device,
            seed=config.seed,
        )
        self.scheduler, self.scheduler_optimizer = setup_scheduler(
            config, context, self.parallel, self.total_steps, self.noise_generator
        )
        self.reference = ReferenceLosses(
            config, self.row_losses, self.parallel, self.agnostic_optimizer
        )
        self.fingerprint = config.resume_fingerprint(
            data_digest([config.train_file, config.safety_file]), self.parallel.world_size
        )
        if self.parallel.enabled:
            self.parallel.broadcast_tensors(self._replicated_tensors(with_buffers=True))
            # Dropout must differ between the slices of one batch: each rank gets its own
            # stream (rank 0 keeps the single-process one).
            if not self.parallel.is_main:
                torch.manual_seed(rank_seed(config.seed, self.parallel.rank, 0))

    def _replicated_tensors(self, with_buffers: bool = False) -> list[torch.Tensor]:
        """Everything that must be identical on every rank: adapters and scheduler state."""
        tensors: list[torch.Tensor] = [p for params in self.adapter_params.values() for p in params]
        if self.scheduler is not None:
            tensors += list(self.scheduler.parameters())
            if with_buffers:
                tensors += [b for b in self.scheduler.buffers() if b.is_floating_point()]
        return tensors

    # ----------------------------------------------------------------------------- one step
    def _train_step(self) -> _StepLosses:
        config = self.config
        parallel = self.parallel
        # The global batch (the same on every rank) and this rank's slice of it. The alignment
        # budget: an alignment batch on every `safety_every`-th step only.
        batch_train = self.train_sampler.next_batch()
        with_safety = self.safety_sampler is not None and self.step % config.safety_every == 0
        batch_safety = (
            self.safety_sampler.next_batch()
            if self.safety_sampler is not None and with_safety
            else None
        )
        train_indices, train_start = parallel.shard(batch_train)
        safety_indices = parallel.shard(batch_safety)[0] if batch_safety is not None else None
        if self.scheduler is not None:
            with torch.no_grad():
                batch_weights = self.scheduler.batch_weights(batch_train.to(self.device)).detach()
            weights = batch_weights[train_start : train_start + len(train_indices)]
        else:
            weights = torch.ones(len(train_indices), device=self.device)

        # Model step: L = mean_{B_s} l_j + mean_{B_f} w_i l_i, normalised over the whole
        # global step (all micro-batches of all ranks), so the summed gradient is the step's.
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        ga = config.gradient_accumulation_steps
        train_chunks = torch.tensor_split(train_indices, ga)
        weight_chunks = torch.tensor_split(weights, ga)
        safety_chunks = (
            torch.tensor_split(safety_indices, ga) if safety_indices is not None else [None] * ga
        )
        task_sum, safety_sum, tokens = 0.0, 0.0, 0
        collected: list[torch.Tensor] = []
        with self._timed("model_passes"):
            for t_idx, w_chunk, s_idx in zip(
                train_chunks, weight_chunks, safety_chunks, strict=True
            ):
                train_losses, safety_losses = self.row_losses.backward(
                    t_idx,
                    w_chunk,
                    s_idx,
                    len(batch_train),
                    len(batch_safety) if batch_safety is not None else 1,
                )
                if safety_losses is not None:
                    safety_sum += safety_losses.sum().item()
                task_sum += (w_chunk * train_losses).sum().item()
                tokens += self.row_losses.token_count(t_idx, s_idx)
                collected.append(train_losses)
        with self._timed("model_update"):
            parallel.sum_gradients(self.adapter_params[MAIN_ADAPTER])
            torch.nn.utils.clip_grad_norm_(self.adapter_params[MAIN_ADAPTER], config.grad_clip)
            self.optimizer.step()
        train_losses_before = torch.cat(collected)

        if self.scheduler is not None:
            # Includes the `loss_after` and `reference` phases timed inside it.
            with self._timed("scheduler_step"):
                self._scheduler_step(batch_train, train_start, train_losses_before, weights)

        totals = parallel.sum(torch.tensor([task_sum, safety_sum, tokens], dtype=torch.float64))
        task = float(totals[0]) / len(batch_train)
        safety = float(totals[1]) / len(batch_safety) if batch_safety is not None else None
        return _StepLosses(
            total=task + (safety or 0.0), task=task, safety=safety, tokens=int(totals[2])
        )

    @contextmanager
    def _timed(self, phase: str) -> Iterator[None]:
        """Add the wall time of the block to `self.phase_seconds[phase]` (the step breakdown)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.phase_seconds[phase] = (
                self.phase_seconds.get(phase, 0.0) + time.perf_counter() - started
            )

    def _scheduler_step(
        self,
        batch_indices: torch.Tensor,
        start: int,
        losses_before: torch.Tensor,
        weights: torch.Tensor,
    ) -> None:
        """One scheduler update from this rank's slice (at `start`) of the global batch."""
        assert self.scheduler is not None and self.scheduler_optimizer is not None
        settings = self.config.scheduler
        batch_indices = batch_indices.to(self.device)
        indices = batch_indices[start : start + len(losses_before)]
        if settings.loss_timing == "after":
            with self._timed("loss_after"):
                losses = self.row_losses.customer_no_grad(indices)
        else:
            losses = losses_before
        with self._timed("reference"):
            reference = self.reference(batch_indices.cpu(), indices.cpu(), weights)
        if model_is_reference(self.config, self.step):
            # The model has not moved from the reference yet: l_i - r_i would be rounding
            # noise. The same tensor makes every difference exactly 0 (the reference above
            # still fills its cache, or trains the agnostic adapter).
            reference = losses
        self.scheduler_optimizer.zero_grad(set_to_none=True)
        shard = BatchShard(batch_indices, start, self.parallel.sum)
        if settings.sgld:
            # pSGLD draws the next sample from grad U (docs/bds-method.md, "Sampling").
            loss = self.scheduler.posterior_energy(indices, losses, reference, shard=shard)
        else:
            loss = self.scheduler.scheduler_loss(indices, losses, reference, shard=shard)
        loss.backward()
        trainable = [p for p in self.scheduler.parameters() if p.requires_grad]
        self.parallel.sum_gradients(trainable)
        if not settings.sgld:
            # No clipping when sampling: it would change the drift and not the noise.
            torch.nn.utils.clip_grad_norm_(self.scheduler.parameters(), settings.grad_clip)
        self.scheduler_optimizer.step()
        self.scheduler.after_update()

    # ----------------------------------------------------------------------------- train
    def train(self) -> TrainResult:
        """Run (or continue) the training loop until the last step or a cancellation.

        Data-parallel: every rank runs this loop in lockstep; callbacks fire on rank 0 only,
        `should_cancel` is asked on every rank and any rank's yes stops all of them.
        """
        config = self.config
        parallel = self.parallel
        listeners = self.callbacks if parallel.is_main else []
        checkpoint_root = config.out_dir / "checkpoints"
        # Rank 0 picks the checkpoint, so every rank resumes from the same one.
        found = latest_valid_checkpoint(checkpoint_root) if parallel.is_main else None
        latest_name = parallel.broadcast_object(str(found) if found is not None else None)
        latest = Path(latest_name) if latest_name is not None else None
        if latest is not None:
            self.load_checkpoint(latest)
            for callback in listeners:
                callback.on_resume(self.step, latest)
        info = {
            "method": config.method,
            "model": config.model,
            "num_train_examples": len(self.data.train_examples),
            "num_safety_examples": len(self.data.safety_examples),
            "total_steps": self.total_steps,
            "start_step": self.step,
            "device": str(self.device),
            "world_size": parallel.world_size,
        }
        for callback in listeners:
            callback.on_start(info)

        started = time.monotonic()
        first_step = self.step
        tokens_this_run = 0
        cancelled = False
        while self.step < self.total_steps:
            if parallel.any(self.should_cancel()):
                cancelled = True
                break
            losses = self._train_step()
            self.step += 1
            tokens_this_run += losses.tokens
            record = {
                "step": self.step,
                "loss": losses.total,
                "task_loss": losses.task,
                "safety_loss": losses.safety,
                "tokens": losses.tokens,
            }
            self.history.append(record)
            if listeners:
                elapsed = self.elapsed_before_resume + time.monotonic() - started
                per_step = (time.monotonic() - started) / max(self.step - first_step, 1)
                event = ProgressEvent(
                    step=self.step,
                    total_steps=self.total_steps,
                    loss=losses.total,
                    task_loss=losses.task,
                    safety_loss=losses.safety,
                    elapsed_s=elapsed,
                    eta_s=per_step * (self.total_steps - self.step),
                    seconds_per_step=per_step,
                    weight_stats=weight_statistics(self.current_weights()),
                    tokens=losses.tokens,
                )
                for callback in listeners:
                    callback.on_step(event)
            if (
                config.checkpoint_every
                and self.step % config.checkpoint_every == 0
                and self.step < self.total_steps
            ):
                self._checkpoint_and_notify(checkpoint_root, listeners)

        run_seconds = time.monotonic() - started
        self.elapsed_before_resume += run_seconds
        steps_this_run = self.step - first_step
        throughput = {
            "seconds_per_step": run_seconds / steps_this_run if steps_this_run else 0.0,
            "tokens_per_second": tokens_this_run / run_seconds if run_seconds > 0 else 0.0,
        }
        if cancelled:
            self._checkpoint_and_notify(checkpoint_root, listeners)
            result = cancelled_result(
                config.out_dir,
                self.step,
                self.resumed_from_step,
                parallel.rank,
                parallel.world_size,
            )
        else:
            parallel.assert_replicas_agree(self._replicated_tensors(), "the trained parameters")
            peak_gpu_mb = self._peak_gpu_memory_mb()
            if parallel.is_main:
                result = write_outputs(
                    self.model,
                    config,
                    self.data,
                    self.scheduler,
                    self.current_weights(),
                    step=self.step,
                    total_steps=self.total_steps,
                    history=self.history,
                    elapsed_s=self.elapsed_before_resume,
                    resumed_from_step=self.resumed_from_step,
                    world_size=parallel.world_size,
                    throughput=throughput,
                    peak_gpu_memory_mb=peak_gpu_mb,
                )
            # Rank 0's files are complete once the others get past this point.
            result = parallel.broadcast_object(result if parallel.is_main else None)
            result.rank = parallel.rank
        for callback in listeners:
            callback.on_end(result)
        return result

    def _peak_gpu_memory_mb(self) -> float | None:
        """Peak allocated CUDA memory, the largest over all ranks (None off CUDA)."""
        if self.device.type != "cuda":
            return None
        local = torch.cuda.max_memory_allocated(self.device) / 2**20
        return float(max(self.parallel.all_gather_object(local)))

    def _checkpoint_and_notify(self, root: Path, listeners: Sequence[TrainerCallback]) -> None:
        path = self.save_checkpoint(root)
        if self.parallel.is_main:
            prune_checkpoints(root, self.config.keep_checkpoints)
        for callback in listeners:
            callback.on_checkpoint(self.step, path)

    def current_weights(self) -> torch.Tensor:
        """Current weight of every customer example (1 for sft and mix)."""
        if self.scheduler is None:
            return torch.ones(len(self.data.train_examples))
        return self.scheduler.all_weights().cpu()

    # ----------------------------------------------------------------------------- checkpoints
    def save_checkpoint(self, root: Path) -> Path:
        """Write everything needed to continue bit-for-bit, atomically; return its folder.

        Data-parallel, every rank calls this: the replicated state is the same everywhere, so
        rank 0 writes it once, with every rank's own random streams gathered to it; the call
        returns on every rank once the checkpoint is committed.
        """
        parallel = self.parallel
        rank_streams = (
            parallel.all_gather_object(rank_rng_state(self.device)) if parallel.enabled else None
        )
        written = None
        if parallel.is_main:
            written = write_training_checkpoint(
                root,
                self.step,
                self._training_state(rank_streams),
                lambda folder: save_adapter(self.model, folder),
            )
        path = Path(parallel.broadcast_object(str(written) if written is not None else None))
        parallel.assert_replicas_agree(
            self._replicated_tensors(), f"the parameters at step {self.step}"
        )
        return path

    def _training_state(self, rank_streams: list[dict[str, torch.Tensor]] | None) -> TrainingState:
        optimizers: dict[str, Any] = {"model": self.optimizer.state_dict()}
        if self.scheduler_optimizer is not None:
            optimizers["scheduler"] = self.scheduler_optimizer.state_dict()
        if self.agnostic_optimizer is not None:
            optimizers["agnostic"] = self.agnostic_optimizer.state_dict()
        return TrainingState(
            lora=lora_state(self.model),
            scheduler=(
                {k: v.detach().cpu().contiguous() for k, v in self.scheduler.state_dict().items()}
                if self.scheduler is not None
                else None
            ),
            reference_cache=self.reference.cache,
            reference_known=self.reference.known,
            optimizers=optimizers,
            rng=capture_rng_state(self.device, self.noise_generator, rank_streams),
            trainer={
                "step": self.step,
                "total_steps": self.total_steps,
                "train_sampler": self.train_sampler.state_dict(),
                "safety_sampler": (
                    self.safety_sampler.state_dict() if self.safety_sampler else None
                ),
                "history": self.history,
                "elapsed_s": self.elapsed_before_resume,
                "fingerprint": self.fingerprint,
            },
        )

    def load_checkpoint(self, path: Path) -> None:
        """Restore a checkpoint written by `save_checkpoint` of an identically configured run."""
        saved = read_training_checkpoint(path, self.fingerprint, self.device)
        load_lora_state(self.model, saved.lora)
        if self.scheduler is not None:
            assert saved.scheduler is not None
            self.scheduler.load_state_dict(
                {k: v.to(self.device) for k, v in saved.scheduler.items()}
            )
        self.reference.cache = saved.reference_cache
        self.reference.known = saved.reference_known
        self.optimizer.load_state_dict(saved.optimizers["model"])
        if self.scheduler_optimizer is not None:
            self.scheduler_optimizer.load_state_dict(saved.optimizers["scheduler"])
        if self.agnostic_optimizer is not None:
            self.agnostic_optimizer.load_state_dict(saved.optimizers["agnostic"])
        state = saved.trainer
        restore_rng_state(
            saved.rng,
            self.noise_generator,
            self.device,
            rank=self.parallel.rank,
            world_size=self.parallel.world_size,
            seed=self.config.seed,
            step=self.step,
        )
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
    select_examples: ExampleSelection | None = None,
) -> TrainResult:
    """Set up and run a training job; continues from the newest valid checkpoint if `resume`.

    Launched by torchrun (`torchrun --nproc-per-node N -m bds_core.cli train ...`), every
    process calls this and the job runs data-parallel; see docs/scaling.md.
    `select_examples`: see `BDSTrainer`.
    """
    trainer = BDSTrainer(
        config, callbacks=callbacks, should_cancel=should_cancel, select_examples=select_examples
    )
    trainer.setup()
    if not resume:
        import shutil

        if trainer.parallel.is_main:
            shutil.rmtree(config.out_dir / "checkpoints", ignore_errors=True)
        trainer.parallel.barrier()
    return trainer.train()


__all__ = ["BDSTrainer", "train"]
