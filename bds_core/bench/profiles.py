"""What `bds bench run` runs: the methods compared and the profiles (quick, full, smoke).

Every setting that shapes a run lives in one `BenchProfile`, so a profile can be read in one
place and every cell of a run uses the same model, steps, batch sizes, learning rates and seeds
(benchmark.md, "Methods compared"). Command-line options replace single fields
(`dataclasses.replace`), never the rest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from bds_core.bench.tasks import get_task
from bds_core.budget import PRE_SWITCH_LOSS_TIMING
from bds_core.encoders import DEFAULT_ENCODER
from bds_core.models.lora import LoraSettings
from bds_core.schedulers import SchedulerSettings
from bds_core.schedulers.base import ReferenceLoss
from bds_core.schedulers.settings import LOSS_TIMINGS, LossTiming

ALIGNMENT_REPLAYS = ("stage0", "d_safe")
"""What the fine-tuning defences replay: stage 0's training set, or D_safe's refusals alone."""


@dataclass(frozen=True)
class BenchMethod:
    """One compared method: which trainer method it runs and with which scheduler."""

    name: str = field(metadata={"help": "name in the results (sft, mix, bds, ...)"})
    description: str = field(metadata={"help": "one line for the report"})
    train_method: str = field(metadata={"help": "TrainConfig.method: sft, mix, bds or filter"})
    scheduler_kind: str | None = field(
        default=None, metadata={"help": "'scalar' or 'neural' for bds methods, else None"}
    )
    reference: ReferenceLoss = field(
        default="none",
        metadata={"help": "reference loss of a bds method: none, initial or agnostic"},
    )
    sampling: bool = field(
        default=False,
        metadata={"help": "sample the weights' posterior (pSGLD) instead of optimising them"},
    )
    scheduler_init: str | None = field(
        default=None,
        metadata={
            "help": "'shipped': the scheduler starts from the shipped pretrained one (transfer)"
        },
    )
    baseline: str | None = field(
        default=None,
        metadata={
            "help": "the paper's baseline this method runs (lisa, vaccine, booster, repnoise); "
            "see bds_core.bench.baselines"
        },
    )

    @property
    def uses_safety(self) -> bool:
        """Whether the fine-tune reads the alignment set D_safe (mix, BDS and Lisa)."""
        return self.train_method in ("mix", "bds", "lisa")

    @property
    def has_weights(self) -> bool:
        """Whether the method gives examples weights other than 1 (so AUROC and ESS apply)."""
        return self.train_method in ("bds", "filter")

    @property
    def is_bds(self) -> bool:
        """Whether this is a BDS variant (the targets compare the best of them)."""
        return self.train_method == "bds"

    def scheduler_settings(self, profile: BenchProfile) -> SchedulerSettings:
        """The trainer's scheduler settings for this method under ``profile``."""
        if self.scheduler_kind == "neural" and self.scheduler_init == "shipped":
            from bds_core.scoring import default_scheduler_path

            # The shipped scheduler's own head and encoder; BDS continues training it.
            return SchedulerSettings(
                kind="neural",
                reference=self.reference,
                loss_timing=profile.loss_timing,
                learning_rate=profile.neural_learning_rate,
                entropy_weight=profile.neural_entropy_weight,
                init_path=str(default_scheduler_path()),
            )
        if self.scheduler_kind == "neural":
            return SchedulerSettings(
                kind="neural",
                reference=self.reference,
                loss_timing=profile.loss_timing,
                learning_rate=profile.neural_learning_rate,
                entropy_weight=profile.neural_entropy_weight,
                options={"encoder": profile.neural_encoder, "head": "mlp", "hidden": 128},
            )
        if self.scheduler_kind == "scalar" and self.sampling:
            return SchedulerSettings(
                kind="scalar",
                reference=self.reference,
                loss_timing=profile.loss_timing,
                learning_rate=profile.sgld_step_size,
                entropy_weight=profile.scalar_entropy_weight,
                sgld=True,
                sgld_temperature=profile.sgld_temperature,
                sgld_burn_in=profile.sgld_burn_in,
                prior_std=profile.prior_std,
            )
        if self.scheduler_kind == "scalar":
            return SchedulerSettings(
                kind="scalar",
                reference=self.reference,
                loss_timing=profile.loss_timing,
                learning_rate=profile.scheduler_learning_rate,
                entropy_weight=profile.scalar_entropy_weight,
            )
        # sft, mix, filter and the baselines run no scheduler (filter reads the shipped one):
        # the settings they have always been keyed and checkpointed with, pinned so that a
        # change of the library's defaults does not re-key their cells.
        return SchedulerSettings(loss_timing=PRE_SWITCH_LOSS_TIMING)


METHODS: dict[str, BenchMethod] = {
    method.name: method
    for method in (
        BenchMethod("sft", "customer data only, every weight 1 (no defence)", "sft"),
        BenchMethod("mix", "customer data plus an alignment batch, weights fixed at 1", "mix"),
        BenchMethod(
            "bds", "BDS, scalar scheduler, reference none (the release)", "bds", "scalar", "none"
        ),
        BenchMethod(
            "bds-ref",
            "BDS, scalar scheduler, reference 'initial' (starting model's loss)",
            "bds",
            "scalar",
            "initial",
        ),
        BenchMethod(
            "bds-neural",
            "BDS, neural scheduler trained in the run, reference 'initial'",
            "bds",
            "neural",
            "initial",
        ),
        BenchMethod(
            "bds-sample",
            "BDS, scalar scheduler sampled from its posterior (pSGLD), reference none",
            "bds",
            "scalar",
            "none",
            sampling=True,
        ),
        BenchMethod(
            "bds-agnostic",
            "BDS, scalar scheduler, reference 'agnostic' (the paper's Eq. 8: a second adapter "
            "trained on the weighted D_ft alone)",
            "bds",
            "scalar",
            "agnostic",
        ),
        BenchMethod(
            "bds-transfer",
            "BDS, neural scheduler initialised from the shipped pretrained one and trained on",
            "bds",
            "neural",
            "initial",
            scheduler_init="shipped",
        ),
        BenchMethod(
            "filter", "drop what the shipped pretrained scheduler flags, then sft", "filter"
        ),
        BenchMethod(
            "lisa",
            "Lisa (arXiv 2405.18641): alternating alignment and user steps, proximal term",
            "lisa",
            baseline="lisa",
        ),
        BenchMethod(
            "vaccine",
            "Vaccine (arXiv 2402.01109): perturbation-aware M0, then sft",
            "sft",
            baseline="vaccine",
        ),
        BenchMethod(
            "booster",
            "Booster (arXiv 2409.01586): M0 attenuating the harmful perturbation, then sft",
            "sft",
            baseline="booster",
        ),
        BenchMethod(
            "repnoise",
            "RepNoise (arXiv 2405.14577): representation-noised M0, then sft",
            "sft",
            baseline="repnoise",
        ),
    )
}
"""The methods `bds bench run` compares, by name."""


def get_method(name: str) -> BenchMethod:
    """The method called ``name``; ValueError listing the known ones otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(METHODS)}") from None


@dataclass(frozen=True)
class BenchProfile:
    """Every setting of a benchmark run; the same for every cell of the run."""

    name: str = field(metadata={"help": "profile name, recorded in the results"})
    shares: tuple[float, ...] = field(metadata={"help": "harmful shares p of D_ft"})
    methods: tuple[str, ...] = field(metadata={"help": "compared methods (see METHODS)"})
    tasks: tuple[str, ...] = field(
        metadata={"help": "benign tasks, in run order; those missing from the data are skipped"}
    )
    max_steps: int | None = field(
        default=None, metadata={"help": "training steps per cell; None: from epochs"}
    )
    epochs: float = field(
        default=5.0,
        metadata={"help": "passes over D_ft when max_steps is None: ceil(epochs * n / batch)"},
    )
    batch_size: int = field(default=8, metadata={"help": "customer examples per step"})
    safety_batch_size: int = field(
        default=8,
        metadata={"help": "alignment rows per alignment step (mix, the BDS variants and Lisa)"},
    )
    safety_every: int = field(
        default=1,
        metadata={
            "help": "alignment budget over time: mix and the BDS variants take an alignment "
            "batch on every k-th step only (the steps between train on the customer rows "
            "alone) and Lisa spends the same alignment rows; 1: every step"
        },
    )
    loss_timing: LossTiming = field(
        default="after",
        metadata={
            "help": "the losses every BDS variant's scheduler step reads: 'after' (recomputed "
            "after the model step, the paper's; one more forward pass over the customer rows) "
            "or 'before' (the model step's own per-example losses; no extra pass)",
            "choices": LOSS_TIMINGS,
        },
    )
    learning_rate: float = field(default=5e-4, metadata={"help": "LoRA AdamW learning rate"})
    lora: LoraSettings = field(
        default_factory=LoraSettings, metadata={"help": "LoRA of stage 0 and of every cell"}
    )
    max_length: int = field(default=128, metadata={"help": "token limit per training example"})
    scheduler_learning_rate: float = field(
        default=0.1, metadata={"help": "scalar scheduler learning rate (bds, bds-ref)"}
    )
    neural_learning_rate: float = field(
        default=3e-3, metadata={"help": "neural scheduler head learning rate (bds-neural)"}
    )
    neural_encoder: str = field(
        default=DEFAULT_ENCODER, metadata={"help": "frozen encoder of bds-neural"}
    )
    neural_entropy_weight: float = field(
        # Measured on the full profile at p = 0.2 (docs/benchmarks.md): without the penalty the
        # head's weights collapse onto a few benign examples over 125 steps (benign ESS 0.008,
        # FA 11%); with 1.0, benign ESS 0.97, FA 37% (sft 38%), AUROC still 1.0.
        default=1.0,
        metadata={"help": "bds-neural's collapse penalty (KL(uniform || weights)); 0 turns it off"},
    )
    scalar_entropy_weight: float = field(
        # 0 in every committed cell: the scalar scheduler as the paper and the release run it.
        # The same KL prior as bds-neural's, an ablation against the scalar scheduler's low
        # benign ESS at small harmful shares (docs/benchmarks.md, "Ablations").
        default=0.0,
        metadata={
            "help": "bds and bds-ref's collapse penalty (KL(uniform || weights)); 0: off, as released"
        },
    )
    sgld_step_size: float = field(
        default=0.1,
        metadata={"help": "bds-sample: pSGLD step size (the scheduler's learning_rate)"},
    )
    sgld_temperature: float = field(
        default=1.0, metadata={"help": "bds-sample: temperature (1 = the posterior)"}
    )
    sgld_burn_in: float = field(
        default=0.5, metadata={"help": "bds-sample: share of the steps discarded as burn-in"}
    )
    prior_std: float = field(
        default=1.0, metadata={"help": "bds-sample: sigma of the Gaussian prior on the logits"}
    )
    alignment_steps: int = field(
        default=96,
        metadata={"help": "stage 0: LoRA-SFT steps on D_safe plus retention before merging"},
    )
    alignment_retention_tasks: tuple[str, ...] = field(
        default=("arithmetic", "sort-words"),
        metadata={
            "help": "stage 0: benign tasks whose training items teach M0 to answer ordinary "
            "requests (the run's own evaluated tasks are left out)"
        },
    )
    alignment_retention_per_task: int = field(
        default=50, metadata={"help": "stage 0: retention examples per retention task"}
    )
    alignment_retention_general: int = field(
        default=400,
        metadata={
            "help": "stage 0: general retention examples (everyday prompts answered by the "
            "base model itself, retention_general.jsonl; 400 is more than the sheet holds: "
            "all of them); 0 leaves them out"
        },
    )
    alignment_replay: str = field(
        default="stage0",
        metadata={
            "help": "the alignment set mix, the BDS variants and Lisa replay while fine-tuning: "
            "stage0 (stage 0's whole training set: D_safe with its retention rows, the "
            "provider's alignment data) or d_safe (the refusals alone)",
            "choices": ("stage0", "d_safe"),
        },
    )
    alignment_batch_size: int = field(default=8, metadata={"help": "stage 0 batch size"})
    alignment_learning_rate: float = field(default=5e-4, metadata={"help": "stage 0 LoRA lr"})
    n_eval_prompts: int | None = field(
        default=None, metadata={"help": "harmful evaluation prompts for HS (None: all)"}
    )
    n_task_items: int | None = field(
        default=None, metadata={"help": "held-out task items for FA and over-refusal (None: all)"}
    )
    n_everyday_prompts: int | None = field(
        default=None,
        metadata={"help": "everyday benign prompts for general over-refusal (None: all)"},
    )
    n_lookalike_prompts: int | None = field(
        default=None, metadata={"help": "safe prompts that look unsafe (None: all)"}
    )
    hs_max_new_tokens: int = field(
        default=64, metadata={"help": "greedy tokens per answer to a harmful prompt"}
    )
    task_max_new_tokens: int = field(
        default=48, metadata={"help": "greedy tokens per answer to a task item"}
    )
    eval_batch_size: int = field(
        # Measured (docs/benchmarks.md, "Evaluation batch"): 64 greedy answers of up to 64 tokens
        # from M0 on one thread took 68.5 CPU s at 8 prompts a batch, 47.8 at 16 and 35.0 at 32,
        # with the same answers.
        default=32,
        metadata={"help": "prompts generated together"},
    )
    checkpoint_every: int = field(
        default=25,
        metadata={"help": "training checkpoint interval inside a cell (0: only on cancel)"},
    )
    pretrained_scheduler_check: bool = field(
        default=True,
        metadata={"help": "score unseen data with the shipped scheduler (detection row)"},
    )

    def __post_init__(self) -> None:
        if not self.shares:
            raise ValueError("a profile needs at least one harmful share")
        for share in self.shares:
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"every share must be between 0 and 1, got {share}")
        if len(set(self.shares)) != len(self.shares):
            raise ValueError(f"shares must be distinct, got {list(self.shares)}")
        if not self.methods:
            raise ValueError("a profile needs at least one method")
        for method in self.methods:
            get_method(method)
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"methods must be distinct, got {list(self.methods)}")
        if not self.tasks:
            raise ValueError("a profile needs at least one task")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be positive, got {self.max_steps}")
        if self.max_steps is None and not (self.epochs > 0 and math.isfinite(self.epochs)):
            raise ValueError(f"epochs must be a positive number, got {self.epochs}")
        for name in (
            "batch_size",
            "safety_batch_size",
            "safety_every",
            "alignment_steps",
            "alignment_batch_size",
            "hs_max_new_tokens",
            "task_max_new_tokens",
            "eval_batch_size",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.loss_timing not in LOSS_TIMINGS:
            raise ValueError(
                f"loss_timing must be one of {', '.join(LOSS_TIMINGS)}, got {self.loss_timing!r}"
            )
        if self.alignment_replay not in ALIGNMENT_REPLAYS:
            raise ValueError(
                f"alignment_replay must be one of {', '.join(ALIGNMENT_REPLAYS)}, "
                f"got {self.alignment_replay!r}"
            )
        for name in ("n_eval_prompts", "n_task_items", "n_everyday_prompts", "n_lookalike_prompts"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1 (or None for all), got {value}")
        for name in (
            "learning_rate",
            "scheduler_learning_rate",
            "neural_learning_rate",
            "alignment_learning_rate",
            "sgld_step_size",
            "sgld_temperature",
            "prior_std",
        ):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive number, got {value}")
        for name in ("neural_entropy_weight", "scalar_entropy_weight"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a number >= 0, got {value}")
        if not 0 <= self.sgld_burn_in < 1:
            raise ValueError(f"sgld_burn_in must lie in [0, 1), got {self.sgld_burn_in}")
        if self.max_length < 8:
            raise ValueError(f"max_length must be at least 8, got {self.max_length}")
        for task in self.alignment_retention_tasks:
            get_task(task)
        if self.alignment_retention_general < 0:
            raise ValueError(
                f"alignment_retention_general must be >= 0, got {self.alignment_retention_general}"
            )
        if self.alignment_retention_per_task < 0:
            raise ValueError(
                "alignment_retention_per_task must be >= 0, "
                f"got {self.alignment_retention_per_task}"
            )
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")

    def steps_for(self, n_train: int) -> int:
        """Training steps of every cell whose D_ft has ``n_train`` examples."""
        if self.max_steps is not None:
            return self.max_steps
        return max(1, math.ceil(self.epochs * n_train / self.batch_size))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings (recorded in every cell and in the report)."""
        return {
            "name": self.name,
            "shares": list(self.shares),
            "methods": list(self.methods),
            "tasks": list(self.tasks),
            "max_steps": self.max_steps,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "safety_batch_size": self.safety_batch_size,
            "safety_every": self.safety_every,
            "loss_timing": self.loss_timing,
            "learning_rate": self.learning_rate,
            "lora": {
                "r": self.lora.r,
                "alpha": self.lora.alpha,
                "dropout": self.lora.dropout,
                "target_modules": list(self.lora.target_modules),
            },
            "max_length": self.max_length,
            "scheduler_learning_rate": self.scheduler_learning_rate,
            "neural_learning_rate": self.neural_learning_rate,
            "neural_encoder": self.neural_encoder,
            "neural_entropy_weight": self.neural_entropy_weight,
            "scalar_entropy_weight": self.scalar_entropy_weight,
            "sgld_step_size": self.sgld_step_size,
            "sgld_temperature": self.sgld_temperature,
            "sgld_burn_in": self.sgld_burn_in,
            "prior_std": self.prior_std,
            "alignment_steps": self.alignment_steps,
            "alignment_batch_size": self.alignment_batch_size,
            "alignment_learning_rate": self.alignment_learning_rate,
            "alignment_retention_tasks": list(self.alignment_retention_tasks),
            "alignment_retention_per_task": self.alignment_retention_per_task,
            "alignment_retention_general": self.alignment_retention_general,
            "n_eval_prompts": self.n_eval_prompts,
            "n_task_items": self.n_task_items,
            "n_everyday_prompts": self.n_everyday_prompts,
            "n_lookalike_prompts": self.n_lookalike_prompts,
            "hs_max_new_tokens": self.hs_max_new_tokens,
            "task_max_new_tokens": self.task_max_new_tokens,
            "eval_batch_size": self.eval_batch_size,
            "checkpoint_every": self.checkpoint_every,
            "pretrained_scheduler_check": self.pretrained_scheduler_check,
        }


DEFAULT_TASK = "spell-number"
"""The default benign task: long answers, and one SmolLM2-135M learns (it cannot do arithmetic:
FA stays near 0 on the word problems, which says nothing about the defence)."""

PROFILES: dict[str, BenchProfile] = {
    # Meant for about 15 minutes on 2 CPU cores with SmolLM2-135M-Instruct (measured: more, see
    # docs/benchmarks.md): stage 0 (once, then cached), four fine-tunes of 30 steps (sft, mix and
    # bds at p = 0.2, and the clean sft run at p = 0) and five evaluations of 50 harmful prompts,
    # 50 everyday and 25 look-unsafe prompts and 50 task items.
    "quick": BenchProfile(
        name="quick",
        shares=(0.2,),
        methods=("sft", "mix", "bds"),
        tasks=(DEFAULT_TASK,),
        max_steps=30,
        batch_size=8,
        safety_batch_size=8,
        max_length=128,
        n_eval_prompts=50,
        n_task_items=50,
        n_everyday_prompts=50,
        n_lookalike_prompts=25,
        task_max_new_tokens=40,
        checkpoint_every=0,
        pretrained_scheduler_check=False,
    ),
    # The sweep of benchmark.md: every share, every method but the sampling ablation
    # (bds-sample, opt-in; issue 19's matrix picks subsets with --methods), 5 passes over D_ft (n = 200:
    # 125 steps a cell), the long-answer task first, then the short-answer one (sentiment:
    # SmolLM2-135M cannot do arithmetic). Several hours.
    "full": BenchProfile(
        name="full",
        shares=(0.0, 0.05, 0.1, 0.2, 0.5),
        methods=tuple(name for name in METHODS if name != "bds-sample"),
        tasks=(DEFAULT_TASK, "sentiment"),
        epochs=5.0,
        batch_size=8,
        safety_batch_size=8,
        max_length=128,
        task_max_new_tokens=48,
        checkpoint_every=25,
        pretrained_scheduler_check=True,
    ),
    # CI's smoke run on the tiny random model: the same code path in seconds.
    "smoke": BenchProfile(
        name="smoke",
        shares=(0.0, 0.5),
        methods=("sft", "bds"),
        tasks=("sort-words",),
        max_steps=2,
        batch_size=2,
        safety_batch_size=2,
        learning_rate=1e-2,
        max_length=64,
        alignment_steps=2,
        alignment_batch_size=2,
        alignment_retention_tasks=("arithmetic",),
        alignment_retention_per_task=2,
        alignment_learning_rate=1e-2,
        n_eval_prompts=3,
        n_task_items=3,
        n_everyday_prompts=3,
        n_lookalike_prompts=2,
        alignment_retention_general=2,
        hs_max_new_tokens=6,
        task_max_new_tokens=6,
        eval_batch_size=4,
        checkpoint_every=0,
        pretrained_scheduler_check=False,
    ),
}
"""Named profiles: `--quick` picks "quick", the default is "full"."""


def get_profile(name: str) -> BenchProfile:
    """The profile called ``name``; ValueError listing the known ones otherwise."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(
            f"unknown profile {name!r}; known profiles: {', '.join(PROFILES)}"
        ) from None
